"""`ztpki requests list | show ID | approve ID | reject ID`: enrolment
requests waiting for an admin (flow F6). Approving and rejecting leave an
audit record whose actor is the admin ($ZTPKI_ADMIN, else the login name)."""

from __future__ import annotations

import json
from typing import Any

import click
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from storage.db import StoreError
from ra.audit import AuditLog
from ra.pending import STATUSES, PendingRecord, PendingRequests
from ra.requests import Issued, Pending, Rejected
from ra.serialize import SerializationError, decode_request

from ztpki.cli.admin import GetInstance, admin_name


def _request_summary(data: bytes) -> dict[str, Any] | None:
    if not data:
        return None  # decided at once: only the answer was kept
    try:
        request = decode_request(data)
    except SerializationError as exc:
        return {"error": str(exc)}
    key = request.public_key
    key_text: str | None
    if isinstance(key, rsa.RSAPublicKey):
        key_text = f"RSA {key.key_size}"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key_text = f"EC {key.curve.name}"
    else:
        key_text = type(key).__name__.removesuffix("PublicKey") if key is not None else None
    return {
        "subject": request.subject.rfc4514_string(),
        "sans": [str(getattr(name, "value", name)) for name in request.sans],
        "public_key": key_text,
        "pop_verified": request.pop_verified,
        "extensions": [f"{e.oid.dotted_string}{' (critical)' if e.critical else ''}" for e in request.extensions],
        "evidence": [type(e).__name__ for e in request.evidence],
        "transaction_id": request.transaction_id,
        "peer": request.peer,
        "received_at": request.received_at.isoformat() if request.received_at else None,
    }


def _pending_json(record: PendingRecord, *, with_request: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": record.id,
        "status": record.status,
        "transaction": record.transaction_key,
        "protocol": record.protocol,
        "operation": record.operation,
        "device": record.device_serial,
        "ca": record.ca,
        "profile": record.profile,
        "certificate_serial": record.certificate_serial,
        "reject_reason": record.reject_reason,
        "reject_text": record.reject_text,
        "decided_by": record.decided_by,
        "created_at": record.created_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
    }
    if with_request:
        data["request"] = _request_summary(record.request)
    return data


def _issue_approved(instance: Any, request_id: str) -> Any:
    """Have the core deliver the approved request now (idempotent: the
    device's next poll gets the same certificate)."""
    return instance.core.issue_approved(request_id)


def _describe_issue(request_id: str, result: Any) -> tuple[str, bool]:
    """(message, success) for what _issue_approved() returned."""
    if isinstance(result, Issued):
        return f"request {request_id} approved; certificate {result.certificate.serial_number:x} issued", True
    if isinstance(result, Rejected):
        return f"request {request_id} approved but not issued: {result.reason.value}: {result.text}", False
    if isinstance(result, Pending):
        return f"request {request_id} approved; issuance pending, retry in {result.retry_after} s", True
    return f"request {request_id} approved: {result}", True


def register(main: click.Group, get_instance: GetInstance) -> None:
    @main.group("requests")
    def requests_group() -> None:
        """List, show, approve and reject enrolment requests awaiting approval."""

    @requests_group.command("list")
    @click.option("--status", type=click.Choice(list(STATUSES)), help="Default: every status.")
    @click.option("--device")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def requests_list(ctx: click.Context, status: str | None, device: str | None, as_json: bool) -> None:
        """List requests, oldest first."""
        records = PendingRequests(get_instance(ctx).engine).list(status=status, device=device)
        if as_json:
            click.echo(json.dumps([_pending_json(r, with_request=False) for r in records], indent=2))
            return
        click.echo(f"{'ID':<36} {'STATUS':<8} {'PROTOCOL':<10} {'OPERATION':<9} {'DEVICE':<20} {'PROFILE':<12} CREATED")
        for r in records:
            click.echo(f"{r.id:<36} {r.status:<8} {r.protocol:<10} {r.operation:<9} {r.device_serial or '-':<20} "
                       f"{r.profile or '-':<12} {r.created_at.strftime('%Y-%m-%d %H:%M:%S')}")
        click.echo(f"{len(records)} request(s)", err=True)

    @requests_group.command("show")
    @click.argument("request_id")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def requests_show(ctx: click.Context, request_id: str, as_json: bool) -> None:
        """Show one request with what it asks for."""
        record = PendingRequests(get_instance(ctx).engine).get(request_id)
        if record is None:
            raise click.ClickException(f"no request {request_id}")
        data = _pending_json(record, with_request=True)
        if as_json:
            click.echo(json.dumps(data, indent=2))
            return
        request = data.pop("request") or {}
        for key, value in [*data.items(), *request.items()]:
            click.echo(f"{key:<18} {', '.join(value) if isinstance(value, list) else value}")

    @requests_group.command("approve")
    @click.argument("request_id")
    @click.pass_context
    def requests_approve(ctx: click.Context, request_id: str) -> None:
        """Approve a pending request and have the certificate issued."""
        instance = get_instance(ctx)
        pending = PendingRequests(instance.engine)
        admin = admin_name()
        try:
            record = pending.approve(request_id, admin)
        except StoreError as exc:
            existing = pending.get(request_id)
            # Approved earlier but not delivered (token down, say): approving
            # again retries the delivery and adds no second approval record.
            if existing is None or existing.status != "approved":
                raise click.ClickException(str(exc)) from None
        else:
            AuditLog(instance.engine).append(
                actor=admin, protocol="cli", operation="approve-request", device=record.device_serial,
                evidence=["admin"], outcome="admin", reason=None,
                details={"request_id": record.id, "transaction": record.transaction_key},
            )
        message, success = _describe_issue(request_id, _issue_approved(instance, request_id))
        click.echo(message)
        if not success:
            ctx.exit(1)

    @requests_group.command("reject")
    @click.argument("request_id")
    @click.option("--reason", "text", default="rejected by an administrator", help="Told to the device where the protocol can.")
    @click.pass_context
    def requests_reject(ctx: click.Context, request_id: str, text: str) -> None:
        """Reject a pending request."""
        instance = get_instance(ctx)
        admin = admin_name()
        try:
            record = PendingRequests(instance.engine).reject(request_id, admin, text)
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
        AuditLog(instance.engine).append(
            actor=admin, protocol="cli", operation="reject-request", device=record.device_serial,
            evidence=["admin"], outcome="rejected", reason="request_rejected",
            details={"request_id": record.id, "transaction": record.transaction_key, "text": text},
        )
        click.echo(f"request {request_id} rejected")

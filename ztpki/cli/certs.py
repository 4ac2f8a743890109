"""`ztpki issue`, `revoke`, `certs list|show` and `crl`: certificates from
CSRs, revocation and CRLs, straight on the CA (flow F6)."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ca.csr import load_csr, order_from_csr
from storage.db import now, parse_serial
from ca.store import CertificateRecord
from ztpki.cli.admin import GetInstance, audited, instance_of


def register(main: click.Group, get_instance: GetInstance) -> None:
    for command in (issue, revoke, certs, crl):
        main.add_command(command)


@click.command()
@click.option("--csr", "csr_path", required=True, type=click.Path(dir_okay=False), help="PKCS#10 request, PEM or DER ('-' for stdin).")
@click.option("--profile", required=True, help="Profile name from profiles.toml.")
@click.option("--ca", "ca_name", help="Issuing CA (default: the instance's default CA).")
@click.option("--days", type=int, help="Shorter validity than the profile's.")
@click.option("--device", "device_id", help="Device identity to record with the certificate.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the PEM here instead of stdout.")
@click.pass_context
@audited("issue", device_param="device_id")
def issue(ctx: click.Context, csr_path: str, profile: str, ca_name: str | None, days: int | None,
          device_id: str | None, out: str | None) -> None:
    """Issue a certificate for a CSR; prints the certificate, then its chain up to the root."""
    data = sys.stdin.buffer.read() if csr_path == "-" else Path(csr_path).read_bytes()
    instance = instance_of(ctx)
    cas = instance.cas
    chosen = cas.profile(profile)
    csr = load_csr(data)
    order = order_from_csr(
        csr, chosen, ca=ca_name or instance.settings.default_ca, device_id=device_id, validity_days=days
    )
    issued = cas.issue(order)
    ctx.obj["audit"] = {"serial": format(issued.serial, "x"), "subject": issued.certificate.subject.rfc4514_string()}
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in (issued.certificate, *issued.chain))
    if out:
        Path(out).write_bytes(pem)
        click.echo(f"issued serial {issued.serial:x} → {out}", err=True)
    else:
        click.echo(pem.decode(), nl=False)


@click.command()
@click.argument("serial_hex")
@click.option("--reason", required=True, help="RFC 5280 reason: keyCompromise, superseded, cessationOfOperation, certificateHold, removeFromCRL (releases a hold), ...")
@click.option("--ca", "ca_name", help="CA of the certificate when the serial exists under several.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@audited("revoke")
def revoke(ctx: click.Context, serial_hex: str, reason: str, ca_name: str | None, as_json: bool) -> None:
    """Revoke a certificate; the CRL is re-issued and OCSP answers at once."""
    revocations = instance_of(ctx).revocations
    record = revocations.revoke(parse_serial(serial_hex), reason, ca=ca_name)
    revocations.refresh_crl(record.authority)
    if as_json:
        click.echo(json.dumps(_record_json(record), indent=2))
    else:
        click.echo(f"{record.serial_hex}: {record.status} ({record.revocation_reason or 'hold released'})")


def _record_json(record: CertificateRecord) -> dict[str, Any]:
    return {
        "serial": record.serial_hex,
        "ca": record.authority,
        "status": record.status,
        "subject": record.subject,
        "sans": list(record.sans),
        "device": record.device_id,
        "profile": record.profile,
        "not_before": record.not_before.isoformat(),
        "not_after": record.not_after.isoformat(),
        "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
        "revocation_reason": record.revocation_reason,
        "created_at": record.created_at.isoformat(),
        "issuance": issuance_state(record),
    }


def issuance_state(record: CertificateRecord) -> str:
    """What the store knows about the signature: a 'signing' row or one
    reconciliation revoked may have been signed by the token (issue 18)."""
    if record.der is not None:
        return "issued"
    if record.status == "signing":
        return "being signed, or left by a crash: the token may have signed it (`ztpki reconcile` revokes it)"
    if record.status == "failed":
        return "not issued: the token returned no valid signature"
    return "possibly issued: the token may have signed it before a crash; never delivered"


@click.group()
def certs() -> None:
    """List, search and show certificates."""


@certs.command("list")
@click.option("--ca", "ca_name")
@click.option("--status", type=click.Choice(["valid", "revoked", "hold", "signing", "failed"]))
@click.option("--subject", help="Substring of the subject.")
@click.option("--device", "device_id")
@click.option("--expiring-within", "expiring_days", type=int, help="Days.")
@click.option("--limit", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def certs_list(ctx: click.Context, ca_name: str | None, status: str | None, subject: str | None,
               device_id: str | None, expiring_days: int | None, limit: int | None, as_json: bool) -> None:
    """List certificates (every serial the token may have signed, 'signing' included)."""
    records = instance_of(ctx).store.certificates(
        authority=ca_name, status=status, subject_contains=subject, device_id=device_id,
        expiring_before=now() + timedelta(days=expiring_days) if expiring_days is not None else None,
        limit=limit,
    )
    if as_json:
        click.echo(json.dumps([_record_json(r) for r in records], indent=2))
        return
    rows = [(r.serial_hex, r.status, r.authority, r.profile, r.not_after.strftime("%Y-%m-%d"), r.subject) for r in records]
    click.echo(f"{'SERIAL':<42} {'STATUS':<8} {'CA':<10} {'PROFILE':<12} {'EXPIRES':<10} SUBJECT")
    for row in rows:
        click.echo(f"{row[0]:<42} {row[1]:<8} {row[2]:<10} {row[3]:<12} {row[4]:<10} {row[5]}")
    click.echo(f"{len(rows)} certificate(s)", err=True)


@certs.command("show")
@click.argument("serial_hex")
@click.option("--ca", "ca_name")
@click.option("--pem", is_flag=True, help="Print the certificate PEM only.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def certs_show(ctx: click.Context, serial_hex: str, ca_name: str | None, pem: bool, as_json: bool) -> None:
    """Show one certificate."""
    record = instance_of(ctx).store.certificate(parse_serial(serial_hex), ca_name)
    certificate = x509.load_der_x509_certificate(record.der) if record.der else None
    if pem:
        if certificate is None:
            raise click.ClickException(f"{record.serial_hex} has no stored certificate: {issuance_state(record)}")
        click.echo(certificate.public_bytes(Encoding.PEM).decode(), nl=False)
        return
    data = _record_json(record)
    if certificate is not None:
        data["pem"] = certificate.public_bytes(Encoding.PEM).decode()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if key != "pem":
            click.echo(f"{key:<18} {', '.join(value) if isinstance(value, list) else value}")


@click.command()
@click.option("--ca", "ca_name", help="CA (default: the instance's default CA).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write the DER CRL.")
@click.pass_context
@audited("crl")
def crl(ctx: click.Context, ca_name: str | None, out: str) -> None:
    """Issue a fresh CRL and write it (DER)."""
    instance = instance_of(ctx)
    record = instance.revocations.publish_crl(ca_name or instance.settings.default_ca)
    Path(out).write_bytes(record.der)
    click.echo(f"CRL number {record.crl_number}, next update {record.next_update.isoformat()} → {out}", err=True)

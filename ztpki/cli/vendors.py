"""`ztpki vendors`: vendor trust anchors (IDevID roots) and vendor CRLs (flow F6)."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import click
from cryptography import x509

from vendor_trust.anchors import AnchorInfo, CrlInfo, VendorTrust, normalise_fingerprint
from vendor_trust.trust_errors import UntrustedChain, VendorTrustError
from vendor_trust.trust_path import fingerprint
from ztpki.cli.admin import GetInstance, audited

@contextmanager
def _one_line_errors(*, with_reason: bool = False) -> Iterator[None]:
    """Refusals and unreadable files end the command with one line, exit 1."""
    try:
        yield
    except VendorTrustError as exc:
        raise click.ClickException(f"{exc.reason}: {exc}" if with_reason else str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or ''}: {exc.strerror or exc}") from None


def _read(path: str) -> bytes:
    return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()


def _load_pem_certificates(path: str) -> list[x509.Certificate]:
    data = _read(path)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise click.ClickException(f"{path}: no PEM certificate in the file") from None
    return certificates


def _anchor_json(anchor: AnchorInfo) -> dict[str, Any]:
    return {
        "vendor": anchor.vendor,
        "fingerprint": anchor.fingerprint,
        "subject": anchor.subject,
        "not_after": anchor.certificate.not_valid_after_utc.isoformat(),
        "added_at": anchor.added_at.isoformat(),
    }


def _crl_json(info: CrlInfo) -> dict[str, Any]:
    return {
        "vendor": info.vendor,
        "issuer": info.issuer,
        "issuer_key_id": info.issuer_key_id,
        "crl_number": info.crl_number,
        "this_update": info.this_update.isoformat(),
        "next_update": info.next_update.isoformat() if info.next_update else None,
        "revoked": info.revoked,
        "verified": info.verified,
    }


def register(main: click.Group, get_instance: GetInstance) -> None:
    def trust(ctx: click.Context) -> VendorTrust:
        return VendorTrust(get_instance(ctx).engine)

    @main.group("vendors")
    def vendors_group() -> None:
        """Device vendors: the roots their IDevIDs chain to, and their CRLs."""

    @vendors_group.command("add")
    @click.argument("name")
    @click.option("--root", "root_path", required=True, type=click.Path(dir_okay=False), help="PEM file of the vendor's CA certificates; every one becomes a trust anchor.")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    @audited("vendors-add")
    def vendors_add(ctx: click.Context, name: str, root_path: str, as_json: bool) -> None:
        """Create vendor NAME if needed and trust the CA certificates in FILE.pem."""
        with _one_line_errors():
            certificates = _load_pem_certificates(root_path)
            vendor_trust = trust(ctx)
            vendor_trust.add_vendor(name, exist_ok=True)
            present = {a.fingerprint for a in vendor_trust.anchors(name)}
            # Re-running the same command is harmless: anchors this vendor
            # already has are skipped, not refused.
            new = [c for c in certificates if fingerprint(c) not in present]
            added = vendor_trust.add_anchors(name, new) if new else []
        if as_json:
            click.echo(json.dumps({"vendor": name, "added": [_anchor_json(a) for a in added],
                                   "already_trusted": len(certificates) - len(new)}, indent=2))
            return
        for anchor in added:
            click.echo(f"{name}: trusting {anchor.subject} ({anchor.fingerprint})")
        if len(new) < len(certificates):
            click.echo(f"{name}: {len(certificates) - len(new)} certificate(s) already trusted", err=True)

    @vendors_group.command("list")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def vendors_list(ctx: click.Context, as_json: bool) -> None:
        """List vendors with their numbers of anchors and CRLs."""
        with _one_line_errors():
            rows = trust(ctx).list_vendors()
        if as_json:
            click.echo(json.dumps([{"name": v.name, "anchors": v.anchors, "crls": v.crls,
                                    "created_at": v.created_at.isoformat()} for v in rows], indent=2))
            return
        click.echo(f"{'VENDOR':<24} {'ANCHORS':>7} {'CRLS':>5}  CREATED")
        for v in rows:
            click.echo(f"{v.name:<24} {v.anchors:>7} {v.crls:>5}  {v.created_at:%Y-%m-%d}")

    @vendors_group.command("anchors")
    @click.argument("name", required=False)
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def vendors_anchors(ctx: click.Context, name: str | None, as_json: bool) -> None:
        """List trust anchors, of one vendor or of all."""
        with _one_line_errors():
            anchors = trust(ctx).anchors(name)
        if as_json:
            click.echo(json.dumps([_anchor_json(a) for a in anchors], indent=2))
            return
        for a in anchors:
            click.echo(f"{a.vendor:<16} {a.fingerprint}  {a.subject}")

    @vendors_group.command("remove")
    @click.argument("name")
    @click.pass_context
    @audited("vendors-remove")
    def vendors_remove(ctx: click.Context, name: str) -> None:
        """Remove vendor NAME with its anchors and CRLs: its devices are no longer trusted."""
        with _one_line_errors():
            trust(ctx).remove_vendor(name)
        click.echo(f"removed vendor {name!r}")

    @vendors_group.command("remove-anchor")
    @click.argument("fingerprint_hex", metavar="FINGERPRINT")
    @click.pass_context
    @audited("vendors-remove-anchor")
    def vendors_remove_anchor(ctx: click.Context, fingerprint_hex: str) -> None:
        """Stop trusting one anchor (SHA-256 fingerprint, as `vendors anchors` shows)."""
        with _one_line_errors():
            removed = trust(ctx).remove_anchor(normalise_fingerprint(fingerprint_hex))
        click.echo(f"{removed.vendor}: no longer trusting {removed.subject}")

    @vendors_group.command("crl")
    @click.argument("name")
    @click.argument("crl_path", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True))
    @click.option("--issuer", "issuer_path", type=click.Path(dir_okay=False), help="PEM of the CA that signed the CRL: its signature is checked now (otherwise when a device chain uses it, or now if the issuer is an anchor).")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    @audited("vendors-crl")
    def vendors_crl(ctx: click.Context, name: str, crl_path: str, issuer_path: str | None, as_json: bool) -> None:
        """Load a CRL (PEM or DER) of one of vendor NAME's CAs."""
        with _one_line_errors():
            issuer = _load_pem_certificates(issuer_path)[0] if issuer_path else None
            info = trust(ctx).load_crl(name, _read(crl_path), issuer=issuer)
        if as_json:
            click.echo(json.dumps(_crl_json(info), indent=2))
            return
        number = f"number {info.crl_number}" if info.crl_number is not None else "no crlNumber"
        checked = "signature verified" if info.verified else "signature checked when used"
        click.echo(f"{name}: CRL of {info.issuer}, {number}, {info.revoked} revoked, {checked}")

    @vendors_group.command("check")
    @click.argument("chain_path", metavar="FILE.pem", type=click.Path(dir_okay=False, allow_dash=True))
    @click.option("--at", "at_text", help="Validate at this ISO 8601 time instead of now (UTC if no offset).")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def vendors_check(ctx: click.Context, chain_path: str, at_text: str | None, as_json: bool) -> None:
        """Validate a device chain (device certificate first) and print the identity it proves."""
        at = _parse_time(at_text) if at_text else None
        with _one_line_errors(with_reason=True):
            certificates = _load_pem_certificates(chain_path)
            if not certificates:
                raise UntrustedChain("no certificate")
            identity = trust(ctx).validate(certificates, at=at)
        result = {
            "serial": identity.serial,
            "source": identity.source,
            "vendor": identity.vendor,
            "subject": identity.certificate.subject.rfc4514_string(),
            "fingerprint": fingerprint(identity.certificate),
            "path": [c.subject.rfc4514_string() or "(empty subject)" for c in identity.path],
        }
        if as_json:
            click.echo(json.dumps(result, indent=2))
            return
        click.echo(f"serial   {identity.serial} (from {identity.source})")
        click.echo(f"vendor   {identity.vendor}")
        click.echo(f"path     {' <- '.join(reversed(result['path']))}")


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 time: {text!r}", param_hint="--at") from None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value

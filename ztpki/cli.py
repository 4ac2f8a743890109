"""The `ztpki` admin command (flow F6)."""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ca.csr import BadRequest, load_csr, order_from_csr
from ca.issuer import IssuanceError
from ca.lint import LintError
from ca.profiles import PolicyViolation, ProfileError
from ca.revocation import RevocationError
from ca.db import StoreError, now, parse_serial
from ca.store import CertificateRecord
from hsm import HsmError, KeyType
from ztpki.assembly import Instance
from ztpki.config import ConfigError
from ztpki.cli_audit import audited

# Every error a user can cause or meet: one line, non-zero exit, no traceback.
USER_ERRORS = (
    ConfigError,
    ProfileError,
    PolicyViolation,
    BadRequest,
    IssuanceError,
    LintError,
    RevocationError,
    StoreError,
    HsmError,
    OSError,
    ValueError,
)


class ZtpkiGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            raise click.ClickException(str(exc) or type(exc).__name__) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get("ZTPKI_DEBUG"):
                raise
            raise click.ClickException(
                f"internal error ({type(exc).__name__}: {exc}); set ZTPKI_DEBUG=1 for details"
            ) from None


def _home(ctx: click.Context) -> Path:
    home = ctx.obj.get("home")
    if home is None:
        raise click.ClickException("no instance: give --home DIR or set ZTPKI_HOME")
    return Path(home)


def _instance(ctx: click.Context) -> Instance:
    if "instance" not in ctx.obj:
        ctx.obj["instance"] = Instance.open(_home(ctx))
        ctx.call_on_close(ctx.obj["instance"].close)
    instance: Instance = ctx.obj["instance"]
    return instance


@click.group(cls=ZtpkiGroup)
@click.option("--home", envvar="ZTPKI_HOME", type=click.Path(file_okay=False), help="Instance directory (or ZTPKI_HOME).")
@click.pass_context
def main(ctx: click.Context, home: str | None) -> None:
    """ztpki: zero-touch enrolment PKI with the CA keys in a PKCS#11 token."""
    ctx.ensure_object(dict)
    ctx.obj["home"] = home


@main.command()
@click.option("--home", "init_home", type=click.Path(file_okay=False), help="Instance directory to create.")
@click.option("--key-type", type=click.Choice([k.value for k in KeyType if k is not KeyType.RSA_4096] + ["rsa-4096"]), default="ec-p256", show_default=True)
@click.option("--pkcs11-module", type=click.Path(dir_okay=False), help="PKCS#11 module; default: a SoftHSM2 token of the instance's own.")
@click.option("--token-label", help="Token label (needed with --pkcs11-module).")
@click.option("--pin", help="Token user PIN (stored in HOME/token.pin, 0600). Prefer ZTPKI_TOKEN_PIN.")
@click.option("--database", help="SQLAlchemy URL; default sqlite:///ztpki.db in the home. postgresql+psycopg://... for several nodes.")
@click.option("--base-url", help="Public base URL written into certificates (CRL, OCSP, CA issuers).")
@click.option("--port", type=int, default=8080, show_default=True, help="Port `serve` listens on by default.")
@click.option("--organization", default="ztpki", show_default=True, help="O= of the CA names.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def init(ctx: click.Context, init_home: str | None, key_type: str, pkcs11_module: str | None,
         token_label: str | None, pin: str | None, database: str | None, base_url: str | None,
         port: int, organization: str, as_json: bool) -> None:
    """Create an instance: token, store, root CA, issuing CA, OCSP signer, CRLs."""
    from ztpki.setup_instance import init_instance

    chosen_home = init_home or ctx.obj.get("home")
    if not chosen_home:
        raise click.ClickException("give --home DIR (or set ZTPKI_HOME)")
    home = Path(chosen_home)
    pin = pin or os.environ.get("ZTPKI_TOKEN_PIN")
    instance = init_instance(
        home, key_type=KeyType(key_type), pkcs11_module=pkcs11_module, token_label=token_label,
        pin=pin, database=database, base_url=base_url, organization=organization, port=port,
    )
    try:
        summary = {
            "home": str(instance.settings.home),
            "token": instance.settings.token.label,
            "root_ca": str(instance.settings.home / "root.pem"),
            "issuing_ca": str(instance.settings.home / f"{instance.settings.default_ca}.pem"),
            "database": instance.settings.database,
            "base_url": instance.settings.base_url,
        }
        if as_json:
            click.echo(json.dumps(summary, indent=2))
        else:
            click.echo(f"Created ztpki instance in {summary['home']}")
            click.echo(f"  token        {summary['token']} (CA keys generated inside, not extractable)")
            click.echo(f"  root CA      {summary['root_ca']}")
            click.echo(f"  issuing CA   {summary['issuing_ca']}")
            click.echo(f"  store        {summary['database']}")
            click.echo(f"  URLs under   {summary['base_url']}")
    finally:
        instance.close()


@main.command()
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
    instance = _instance(ctx)
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


@main.command()
@click.argument("serial_hex")
@click.option("--reason", required=True, help="RFC 5280 reason: keyCompromise, superseded, cessationOfOperation, certificateHold, removeFromCRL (releases a hold), ...")
@click.option("--ca", "ca_name", help="CA of the certificate when the serial exists under several.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@audited("revoke")
def revoke(ctx: click.Context, serial_hex: str, reason: str, ca_name: str | None, as_json: bool) -> None:
    """Revoke a certificate; the CRL is re-issued and OCSP answers at once."""
    revocations = _instance(ctx).revocations
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


@main.group()
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
    records = _instance(ctx).store.certificates(
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
    record = _instance(ctx).store.certificate(parse_serial(serial_hex), ca_name)
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


@main.command()
@click.option("--ca", "ca_name", help="CA (default: the instance's default CA).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write the DER CRL.")
@click.pass_context
@audited("crl")
def crl(ctx: click.Context, ca_name: str | None, out: str) -> None:
    """Issue a fresh CRL and write it (DER)."""
    instance = _instance(ctx)
    record = instance.revocations.publish_crl(ca_name or instance.settings.default_ca)
    Path(out).write_bytes(record.der)
    click.echo(f"CRL number {record.crl_number}, next update {record.next_update.isoformat()} → {out}", err=True)


# The other command groups, each in its own module.
from ztpki import cli_devices, cli_more, cli_ra, cli_vendors  # noqa: E402

for _module in (cli_more, cli_vendors, cli_devices, cli_ra):
    _module.register(main, _instance)


if __name__ == "__main__":  # pragma: no cover
    main()

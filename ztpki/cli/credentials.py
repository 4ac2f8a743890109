"""`ztpki credentials create | list | revoke REF`: enrolment credentials
(CMP MAC secrets and EST passwords; flow F6)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import click

from storage.db import now
from vendor_trust.credentials import CredentialInfo, Credentials
from vendor_trust.registry import DeviceRegistry
from ztpki.cli.admin import GetInstance, audited
from ztpki.cli.devices import duration_option, iso, refusing, usable_device


def _credential_state(info: CredentialInfo, at: datetime) -> str:
    return info.failure(at) or "usable"


def _credential_json(info: CredentialInfo, at: datetime) -> dict[str, Any]:
    return {
        "reference": info.reference, "kind": info.kind, "device": info.device_serial, "batch": info.batch,
        "profile": info.profile, "uses": info.uses, "max_uses": info.max_uses,
        "expires_at": iso(info.expires_at), "state": _credential_state(info, at),
        "created_at": iso(info.created_at), "last_used_at": iso(info.last_used_at),
    }


def register(main: click.Group, get_instance: GetInstance) -> None:
    @main.group("credentials")
    def credentials() -> None:
        """Enrolment credentials: CMP MAC secrets and EST passwords."""

    @credentials.command("create")
    @click.option("--device", "device_serial", help="Bind to this device ...")
    @click.option("--batch", help="... or to this batch of devices.")
    @click.option("--kind", type=click.Choice(["mac", "password"]), required=True,
                  help="mac: a CMP shared secret (PBM/PBMAC1); password: an EST HTTP Basic password.")
    @click.option("--profile", help="Restrict what the credential may obtain to this profile.")
    @click.option("--username", help="EST username (default: a random one).")
    @click.option("--ttl", metavar="DURATION", callback=duration_option,
                  help="Lifetime, e.g. 30m, 12h, 7d (default: no expiry).")
    @click.option("--max-uses", type=click.IntRange(min=1))
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    @refusing
    @audited("credentials-create", device_param="device_serial")
    def credentials_create(ctx: click.Context, device_serial: str | None, batch: str | None, kind: str,
                           profile: str | None, username: str | None, ttl: timedelta | None,
                           max_uses: int | None, as_json: bool) -> None:
        """Create a credential; its secret is shown only now."""
        if (device_serial is None) == (batch is None):
            raise click.UsageError("give --device SERIAL or --batch NAME")
        if username is not None and kind != "password":
            raise click.UsageError("--username goes with --kind password")
        instance = get_instance(ctx)
        if device_serial is not None:
            usable_device(DeviceRegistry(instance.engine), device_serial)
        binding: dict[str, Any] = dict(
            device_serial=device_serial, batch=batch, profile=profile, ttl=ttl, max_uses=max_uses
        )
        if kind == "mac":
            name, secret = instance.credentials.create_mac(**binding)
            labels = ("reference", "secret")
        else:
            name, secret = instance.credentials.create_password(username=username, **binding)
            labels = ("username", "password")
        if as_json:
            click.echo(json.dumps({"kind": kind, labels[0]: name, labels[1]: secret}, indent=2))
            return
        click.echo(f"{labels[0]}: {name}\n{labels[1]}: {secret}")
        hint = f"openssl cmp -ref {name} -secret pass:{secret}" if kind == "mac" else f"curl -u {name}:{secret}"
        click.echo(f"(shown only now; e.g. {hint})", err=True)

    @credentials.command("list")
    @click.option("--device", "device_serial")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    @refusing
    def credentials_list(ctx: click.Context, device_serial: str | None, as_json: bool) -> None:
        """List credentials (never their secrets)."""
        at = now()
        found = Credentials(get_instance(ctx).engine, None).list(device_serial=device_serial)
        if as_json:
            click.echo(json.dumps([_credential_json(info, at) for info in found], indent=2))
            return
        for info in found:
            bound = f"device {info.device_serial}" if info.device_serial else f"batch {info.batch}"
            uses = f"{info.uses}/{info.max_uses if info.max_uses is not None else '-'}"
            expires = info.expires_at.isoformat(timespec="seconds") if info.expires_at else "never"
            click.echo(f"{info.reference:<24} {info.kind:<8} {_credential_state(info, at):<8} {bound:<30} "
                       f"uses {uses:<7} expires {expires}  profile {info.profile or '-'}")

    @credentials.command("revoke")
    @click.argument("reference")
    @click.pass_context
    @refusing
    @audited("credentials-revoke")
    def credentials_revoke(ctx: click.Context, reference: str) -> None:
        """Revoke a credential (a MAC reference or an EST username)."""
        Credentials(get_instance(ctx).engine, None).revoke(reference)
        click.echo(f"credential {reference} revoked")

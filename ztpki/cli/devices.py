"""`ztpki devices import FILE | list | show SERIAL | assign | block SERIAL |
unblock SERIAL`: the device registry (flow F6), and the helpers the
credentials and pins commands share with it (durations, JSON streams,
one-line refusals)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sys
from datetime import datetime, timedelta
from typing import Any, Callable, Iterator, cast

import click

from ra.admin import block_device, unblock_device
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

from ca.revocation import reason_name
from vendor_trust.credentials import CredentialError
from vendor_trust.device_import import IMPORT_MODES, ImportFileError, ImportMode, import_devices
from vendor_trust.registry import DEVICE_STATES, Device, DeviceRegistry, RegistryError
from ztpki.cli.admin import GetInstance, admin_name, audited


_DURATION = re.compile(r"\s*(\d+)\s*([smhdw])\s*")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """'30m', '12h', '7d', '2w', '90s' -> timedelta."""
    match = _DURATION.fullmatch(text)
    if match is None or int(match.group(1)) == 0:
        raise click.BadParameter(f"{text!r}: give a positive number and a unit s, m, h, d or w (e.g. 30m, 12h, 7d)")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def duration_option(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    return parse_duration(value) if value is not None else None


def refusing(function: Callable[..., None]) -> Callable[..., None]:
    """The registry's and credentials' refusals as one-line errors, not tracebacks."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            function(*args, **kwargs)
        except (RegistryError, CredentialError, ImportFileError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _key_summary(der: bytes) -> str:
    key = load_der_public_key(der)
    if isinstance(key, rsa.RSAPublicKey):
        kind = f"RSA {key.key_size}"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        kind = f"EC {key.curve.name}"
    else:
        kind = "Ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else "Ed448"
    return f"{kind} sha256:{hashlib.sha256(der).hexdigest()}"


def device_json(device: Device) -> dict[str, Any]:
    pem = None
    if device.public_key is not None:
        key = load_der_public_key(device.public_key)
        pem = key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode("ascii")
    return {
        "serial": device.serial, "state": device.state, "vendor": device.vendor, "model": device.model,
        "mac": device.mac, "imei": device.imei, "hnb_id": device.hnb_id, "tenant": device.tenant,
        "profile": device.profile, "public_key": pem, "blocked_reason": device.blocked_reason,
        "blocked_at": iso(device.blocked_at), "created_at": iso(device.created_at),
        "updated_at": iso(device.updated_at),
    }


def stream_json(items: Iterator[dict[str, Any]]) -> None:
    """A JSON array written item by item: listing a million devices costs no memory."""
    click.echo("[", nl=False)
    for index, item in enumerate(items):
        click.echo(("," if index else "") + "\n  " + json.dumps(item), nl=False)
    click.echo("\n]")


def usable_device(registry: DeviceRegistry, serial: str) -> Device:
    device = registry.require(serial)
    if device.blocked:
        raise click.ClickException(f"device {serial!r} is blocked ({device.blocked_reason})")
    return device


def register(main: click.Group, get_instance: GetInstance) -> None:
    @main.group("devices")
    def devices() -> None:
        """Import, list, show, assign, block and unblock devices."""

    @devices.command("import")
    @click.argument("file", type=click.Path(dir_okay=False))
    @click.option("--mode", type=click.Choice(IMPORT_MODES), default="all-or-nothing", show_default=True,
                  help="With bad rows: import none, or import the good ones.")
    @click.option("--no-update", is_flag=True, help="Leave devices that exist already as they are.")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    @refusing
    @audited("devices-import")
    def devices_import(ctx: click.Context, file: str, mode: str, no_update: bool, as_json: bool) -> None:
        """Import device records: CSV with a header row, or JSON Lines.

        Keys: serial (required), vendor, model, mac, imei, hnb_id, tenant,
        profile, public_key (PEM or base64 DER SubjectPublicKeyInfo). An
        empty field keeps what an existing device has. Every bad row is
        reported by line; the exit status is 1 if there was any.
        """
        engine = get_instance(ctx).engine
        size = os.path.getsize(file) if os.path.isfile(file) else 0
        with click.progressbar(length=max(size, 1), label="importing", file=sys.stderr) as bar:
            report = import_devices(
                engine, file, mode=cast(ImportMode, mode), update_existing=not no_update,
                progress=lambda done: bar.update(done - bar.pos),
            )
        if as_json:
            click.echo(json.dumps({
                "imported": report.imported, "updated": report.updated, "unchanged": report.unchanged,
                "records": report.records, "committed": report.committed,
                "bad_rows": [{"line": line, "message": message} for line, message in report.bad_rows],
            }, indent=2))
        else:
            for line, message in report.bad_rows:
                click.echo(f"line {line}: {message}")
            if report.committed:
                summary = f"imported {report.imported}, updated {report.updated}, unchanged {report.unchanged}"
                if report.bad_rows:
                    summary += f"; skipped {len(report.bad_rows)} bad row(s)"
            else:
                summary = (f"{len(report.bad_rows)} bad row(s): nothing imported (all-or-nothing; "
                           "fix them, or use --mode skip-bad to import the good rows)")
            click.echo(summary)
        if report.bad_rows:
            ctx.exit(1)

    @devices.command("list")
    @click.option("--state", type=click.Choice(DEVICE_STATES))
    @click.option("--vendor")
    @click.option("--profile")
    @click.option("--limit", type=click.IntRange(min=1))
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    @refusing
    def devices_list(ctx: click.Context, state: str | None, vendor: str | None, profile: str | None,
                     limit: int | None, as_json: bool) -> None:
        """List devices in registration order."""
        found = DeviceRegistry(get_instance(ctx).engine).list(vendor=vendor, state=state, profile=profile, limit=limit)
        if as_json:
            stream_json(device_json(device) for device in found)
            return
        for d in found:
            click.echo(f"{d.serial:<24} {d.state:<10} {d.vendor or '-':<12} {d.model or '-':<14} "
                       f"{d.profile or '-':<14} {d.mac or '-':<17} {d.imei or '-'}")

    @devices.command("show")
    @click.argument("serial")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    @refusing
    def devices_show(ctx: click.Context, serial: str, as_json: bool) -> None:
        """Show one device."""
        device = DeviceRegistry(get_instance(ctx).engine).require(serial)
        if as_json:
            click.echo(json.dumps(device_json(device), indent=2))
            return
        for name, value in device_json(device).items():
            if name == "public_key":
                value = _key_summary(device.public_key) if device.public_key else None
            click.echo(f"{name + ':':<16}{value if value is not None else '-'}")

    @devices.command("assign")
    @click.argument("serial", required=False)
    @click.option("--profile", required=True)
    @click.option("--vendor", help="Instead of SERIAL: every device of this vendor ...")
    @click.option("--model", help="... and of this model.")
    @click.pass_context
    @refusing
    @audited("devices-assign", device_param="serial")
    def devices_assign(ctx: click.Context, serial: str | None, profile: str, vendor: str | None,
                       model: str | None) -> None:
        """Assign a profile to a device, or to a fleet by vendor (and model).
        It takes effect at the device's next enrolment or activation."""
        registry = DeviceRegistry(get_instance(ctx).engine)
        if (serial is None) == (vendor is None):
            raise click.UsageError("give a SERIAL or --vendor (with --model if you like)")
        if serial is not None:
            if model is not None:
                raise click.UsageError("--model goes with --vendor")
            registry.assign_profile(serial, profile)
            click.echo(f"device {serial}: profile {profile}")
        else:
            count = registry.set_profile_for(vendor=str(vendor), model=model, profile=profile)
            click.echo(f"{count} device(s) of {vendor}{' ' + model if model else ''}: profile {profile}")

    @devices.command("block")
    @click.argument("serial")
    @click.option("--reason", default="cessationOfOperation", show_default=True,
                  help="The revocation reason of its certificates (RFC 5280), e.g. keyCompromise.")
    @click.pass_context
    @refusing
    def devices_block(ctx: click.Context, serial: str, reason: str) -> None:
        """Block a device: its certificates are revoked and it cannot enrol again."""
        instance = get_instance(ctx)
        registry = DeviceRegistry(instance.engine)
        registry.require(serial)
        reason = reason_name(reason)
        revoked = block_device(instance.core, serial, reason, admin=admin_name())
        click.echo(f"device {serial} blocked ({reason}); {len(revoked)} certificate(s) revoked")

    @devices.command("unblock")
    @click.argument("serial")
    @click.pass_context
    @refusing
    def devices_unblock(ctx: click.Context, serial: str) -> None:
        """Allow a blocked device to enrol again (it starts as 'registered')."""
        instance = get_instance(ctx)
        registry = DeviceRegistry(instance.engine)
        if registry.require(serial).state != "blocked":
            click.echo(f"device {serial} is not blocked")
            return
        unblock_device(instance.core, serial, admin=admin_name())
        click.echo(f"device {serial}: {registry.require(serial).state}")

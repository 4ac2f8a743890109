"""`ztpki pins create --device SERIAL | list | revoke --device SERIAL`:
one-time PINs (flow F6)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import click

from storage.db import now
from vendor_trust.pins import PinInfo, Pins
from vendor_trust.registry import DeviceRegistry
from ztpki.cli.admin import GetInstance, audited
from ztpki.cli.devices import duration_option, iso, refusing, usable_device


def _pin_json(info: PinInfo, at: datetime) -> dict[str, Any]:
    return {
        "id": info.id, "device": info.device_serial, "state": info.shown_state(at), "failures": info.failures,
        "expires_at": iso(info.expires_at), "created_at": iso(info.created_at), "used_at": iso(info.used_at),
    }


def register(main: click.Group, get_instance: GetInstance) -> None:
    @main.group("pins")
    def pins() -> None:
        """One-time enrolment PINs (SCEP challengePassword)."""

    @pins.command("create")
    @click.option("--device", "device_serial", required=True)
    @click.option("--ttl", metavar="DURATION", callback=duration_option, default="7d", show_default=True,
                  help="Lifetime, e.g. 30m, 12h, 7d.")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    @refusing
    @audited("pins-create", device_param="device_serial")
    def pins_create(ctx: click.Context, device_serial: str, ttl: timedelta, as_json: bool) -> None:
        """Create the device's PIN (revoking any earlier one); it is shown only now."""
        engine = get_instance(ctx).engine
        device = usable_device(DeviceRegistry(engine), device_serial)
        pin = Pins(engine).create(device.serial, ttl)
        if as_json:
            click.echo(json.dumps({"device": device.serial, "pin": pin,
                                   "expires_at": iso(now() + ttl)}, indent=2))
        else:
            click.echo(pin)

    @pins.command("list")
    @click.option("--device", "device_serial")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    @refusing
    def pins_list(ctx: click.Context, device_serial: str | None, as_json: bool) -> None:
        """List PINs (never the PINs themselves)."""
        at = now()
        found = Pins(get_instance(ctx).engine).list(device_serial)
        if as_json:
            click.echo(json.dumps([_pin_json(info, at) for info in found], indent=2))
            return
        for info in found:
            click.echo(f"{info.id:<6} {info.device_serial:<24} {info.shown_state(at):<8} failures {info.failures}  "
                       f"expires {info.expires_at.isoformat(timespec='seconds')}")

    @pins.command("revoke")
    @click.option("--device", "device_serial")
    @click.option("--id", "pin_id", type=int)
    @click.pass_context
    @refusing
    @audited("pins-revoke", device_param="device_serial")
    def pins_revoke(ctx: click.Context, device_serial: str | None, pin_id: int | None) -> None:
        """Revoke the device's live PIN (or one PIN by --id)."""
        if (device_serial is None) == (pin_id is None):
            raise click.UsageError("give --device SERIAL or --id N")
        count = Pins(get_instance(ctx).engine).revoke(device_serial, pin_id=pin_id)
        click.echo(f"revoked {count} PIN(s)")

"""Admin actions that span the registry and the CA (flow F4: a lost or
stolen device is blocked, its certificates revoked at once)."""

from __future__ import annotations

from typing import Any

from ca.revocation import REASONS, RevocationError, reason_name


def block_device(core: Any, serial: str, reason: str, *, admin: str) -> list[int]:
    """Block the device, then revoke every certificate it holds.

    Blocking first closes the door: an enrolment racing with this call is
    refused once the block is committed, and whatever it got before is
    revoked by the loop below. Returns the serials revoked.
    """
    reason = reason_name(reason) if reason else "cessationOfOperation"
    if reason not in REASONS:
        raise RevocationError(f"unknown revocation reason {reason!r}")
    core.registry.block(serial, reason)
    revoked = []
    for record in core.cas.store.certificates(device_id=serial):
        if record.status in ("valid", "hold"):
            try:
                core.revocations.revoke(record.serial, reason, ca=record.authority)
            except RevocationError:
                continue  # revoked meanwhile by someone else: fine
            revoked.append(record.serial)
    core.audit.append(
        actor=admin, protocol="cli", operation="block-device", device=serial, evidence=["admin"],
        outcome="admin", reason=reason, serial=None,
        details={"revoked": [format(s, "x") for s in revoked]},
    )
    return revoked


def unblock_device(core: Any, serial: str, *, admin: str) -> None:
    core.registry.unblock(serial)
    core.audit.append(
        actor=admin, protocol="cli", operation="unblock-device", device=serial, evidence=["admin"],
        outcome="admin", reason=None, serial=None, details={},
    )

"""What every admin command shares: the instance it works on, who the admin
is, and the audit record naming the admin that every command that changes
something leaves (issue 4: "the admin for CLI actions")."""

from __future__ import annotations

import functools
import getpass
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from ztpki.instance import Instance

GetInstance = Callable[[click.Context], Instance]

F = TypeVar("F", bound=Callable[..., Any])

# Never copied into the audit log.
_SECRET_PARAMS = {"pin", "password", "secret"}


def home_of(ctx: click.Context) -> Path:
    home = ctx.obj.get("home")
    if home is None:
        raise click.ClickException("no instance: give --home DIR or set ZTPKI_HOME")
    return Path(home)


def instance_of(ctx: click.Context) -> Instance:
    if "instance" not in ctx.obj:
        ctx.obj["instance"] = Instance.open(home_of(ctx))
        ctx.call_on_close(ctx.obj["instance"].close)
    instance: Instance = ctx.obj["instance"]
    return instance


def admin_name() -> str:
    name = os.environ.get("ZTPKI_ADMIN")
    if name:
        return name
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return f"uid:{os.getuid()}"


def audited(operation: str, *, device_param: str | None = None) -> Callable[[F], F]:
    """Record `operation` with the command's parameters once it has succeeded.

    The command may put what it produced (e.g. a certificate serial) into
    ctx.obj["audit"] as a dict; it is recorded with the parameters.
    """

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                result = command(*args, **kwargs)
            except click.exceptions.Exit as stop:
                # Done, with a non-zero exit (e.g. an import that skipped bad rows).
                _record(operation, device_param, kwargs, {"exit_code": stop.exit_code})
                raise
            _record(operation, device_param, kwargs, {})
            return result

        return run  # type: ignore[return-value]

    return decorate


def _record(operation: str, device_param: str | None, kwargs: dict[str, Any], extra: dict[str, Any]) -> None:
    ctx = click.get_current_context()
    instance = ctx.obj.get("instance") if isinstance(ctx.obj, dict) else None
    if instance is None:
        return
    produced = ctx.obj.pop("audit", {}) if isinstance(ctx.obj, dict) else {}
    params = {
        k: (str(v) if not isinstance(v, (str, int, bool, type(None))) else v)
        for k, v in kwargs.items()
        if k not in _SECRET_PARAMS and k != "ctx"
    }
    instance.audit.append(
        actor=admin_name(),
        protocol="cli",
        operation=operation,
        device=str(kwargs[device_param]) if device_param and kwargs.get(device_param) else None,
        evidence=["admin", f"uid:{os.getuid()}"],
        outcome="admin",
        reason=None,
        serial=produced.pop("serial", None),
        details={**params, **produced, **extra},
    )

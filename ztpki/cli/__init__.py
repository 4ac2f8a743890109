"""The `ztpki` admin command (flow F6): the group, its error handling, and
one module per command group (ztpki/cli/<group>.py, each with register())."""

from __future__ import annotations

import os
from typing import Any

import click

from ca.csr import BadRequest
from ca.issuer import IssuanceError
from ca.lint import LintError
from ca.profiles import PolicyViolation, ProfileError
from ca.revocation import RevocationError
from storage.db import StoreError
from hsm import HsmError
from ztpki.config import ConfigError
from ztpki.cli.admin import instance_of

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


@click.group(cls=ZtpkiGroup)
@click.option("--home", envvar="ZTPKI_HOME", type=click.Path(file_okay=False), help="Instance directory (or ZTPKI_HOME).")
@click.pass_context
def main(ctx: click.Context, home: str | None) -> None:
    """ztpki: zero-touch enrolment PKI with the CA keys in a PKCS#11 token."""
    ctx.ensure_object(dict)
    ctx.obj["home"] = home


# The command groups, each in its own module.
from ztpki.cli import (  # noqa: E402
    audit, ca, certs, credentials, demo, devices, pins, requests, serve, vendors,
)

for _module in (certs, ca, serve, demo, vendors, devices, credentials, pins, audit, requests):
    _module.register(main, instance_of)


if __name__ == "__main__":  # pragma: no cover
    main()

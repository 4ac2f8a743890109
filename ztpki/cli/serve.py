"""`ztpki serve` (gunicorn with the HTTP and HTTPS listeners, ztpki/http/)
and `ztpki reconcile` (one round of the maintenance every serve worker runs)."""

from __future__ import annotations

import json

import click

from ztpki.cli.admin import GetInstance, audited


def register(main: click.Group, get_instance: GetInstance) -> None:
    @main.command()
    @click.option("--host", help="Listen address (default from ztpki.toml, 127.0.0.1).")
    @click.option("--port", type=int, help="Port (default from ztpki.toml, 8080).")
    @click.option("--workers", type=int, help="Worker processes (default from ztpki.toml, 2).")
    # Before the gevent workers, --threads > 1 chose gthread workers; accepted
    # and ignored so that scripts passing it (bench/est.py) keep working.
    @click.option("--threads", type=click.IntRange(min=1), default=1, hidden=True)
    @click.option("--tls-port", type=int, help="HTTPS port (default from [tls] in ztpki.toml; HTTPS only with [tls]).")
    @click.option("--access-log", is_flag=True)
    @click.pass_context
    def serve(ctx: click.Context, host: str | None, port: int | None, workers: int | None, threads: int,
              tls_port: int | None, access_log: bool) -> None:
        """Serve CRLs, OCSP, CA certificates, CMP and EST (gunicorn, pre-forking
        gevent workers); HTTPS too when ztpki.toml has a [tls] table."""
        from ztpki.http.server import serve as run_server

        instance = get_instance(ctx)
        settings = instance.settings
        instance.close()
        if tls_port is not None and settings.tls is None:
            raise click.ClickException("--tls-port needs a [tls] table in ztpki.toml (certificate, key, port)")
        ctx.exit(run_server(settings.home, host=host or settings.host, port=port or settings.port,
                            workers=workers or settings.workers, access_log=access_log,
                            tls_port=tls_port))

    @main.command()
    @click.option("--older-than", "older_than", type=click.IntRange(min=0), default=60, show_default=True,
                  help="Seconds a row must have been 'signing' before it counts as left by a crash.")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    @audited("reconcile")
    def reconcile(ctx: click.Context, older_than: int, as_json: bool) -> None:
        """Repair what a crash left: revoke rows left 'signing' as possibly issued,
        re-issue stale CRLs (what every `ztpki serve` worker does each minute).
        Each repair has its own audit record."""
        from datetime import timedelta

        from ztpki.maintenance import run_once, tasks_for

        results = run_once(tasks_for(get_instance(ctx), signing_bound=timedelta(seconds=older_than)))
        if as_json:
            click.echo(json.dumps(results, indent=2))
        else:
            for name, count in results.items():
                click.echo(f"{name:<16} {'FAILED (see log)' if count is None else count}")
        if any(count is None for count in results.values()):
            ctx.exit(1)

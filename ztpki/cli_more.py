"""CLI commands for CAs, serving and the demo (split from cli.py for size)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import click
from cryptography import x509

from ca import hierarchy
from hsm import KeyType
from ztpki.assembly import Instance
from ztpki.cli_audit import audited

GetInstance = Callable[[click.Context], Instance]


def register(main: click.Group, get_instance: GetInstance) -> None:
    @main.group("ca")
    def ca_group() -> None:
        """List, add and import certification authorities."""

    @ca_group.command("list")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def ca_list(ctx: click.Context, as_json: bool) -> None:
        instance = get_instance(ctx)
        rows: list[dict[str, Any]] = []
        for record in instance.store.list_authorities():
            certificate = x509.load_der_x509_certificate(record.certificate)
            rows.append({
                "name": record.name,
                "kind": record.kind,
                "subject": certificate.subject.rfc4514_string(),
                "not_after": certificate.not_valid_after_utc.isoformat(),
                "key_label": record.key_label,
                "ocsp_responder": bool(record.ocsp_key_label),
                "default": record.name == instance.settings.default_ca,
            })
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        for row in rows:
            mark = "*" if row["default"] else " "
            click.echo(f"{mark} {row['name']:<12} {row['kind']:<9} {row['not_after'][:10]}  {row['subject']}")

    @ca_group.command("add")
    @click.argument("name")
    @click.option("--parent", default="root", show_default=True)
    @click.option("--key-type", type=click.Choice([k.value for k in KeyType]), default="ec-p256", show_default=True)
    @click.option("--subject", help="RFC 4514 subject, e.g. 'CN=Phones CA,O=Example'. Default: CN=<name> CA.")
    @click.pass_context
    @audited("ca-add")
    def ca_add(ctx: click.Context, name: str, parent: str, key_type: str, subject: str | None) -> None:
        """Add an issuing CA (key generated in the token) with its OCSP signer."""
        instance = get_instance(ctx)
        name_obj = x509.Name.from_rfc4514_string(subject) if subject else hierarchy.simple_name(f"{name} CA")
        kind = KeyType(key_type)
        hierarchy.create_issuing(instance.cas, name, name_obj, kind, parent=parent)
        hierarchy.create_ocsp_signer(instance.cas, name, KeyType.EC_P256 if kind.value.startswith("ec") else KeyType.RSA_2048)
        instance.revocations.publish_crl(name)
        from ztpki.setup_instance import export_ca_certificates
        export_ca_certificates(instance)
        click.echo(f"added issuing CA {name!r} under {parent!r}")

    @ca_group.command("import")
    @click.argument("name")
    @click.option("--cert", "cert_path", required=True, type=click.Path(dir_okay=False), help="The CA certificate (PEM).")
    @click.option("--key-label", required=True, help="Label of its private key, already in the token.")
    @click.option("--chain", "chain_path", type=click.Path(dir_okay=False), help="PEM of the CAs above it, nearest first.")
    @click.pass_context
    @audited("ca-import")
    def ca_import(ctx: click.Context, name: str, cert_path: str, key_label: str, chain_path: str | None) -> None:
        """Adopt an existing issuing CA whose key is already in the token."""
        instance = get_instance(ctx)
        certificate = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        parents = x509.load_pem_x509_certificates(Path(chain_path).read_bytes()) if chain_path else []
        hierarchy.import_issuing(instance.cas, name, certificate, key_label, parents)
        hierarchy.create_ocsp_signer(instance.cas, name, KeyType.EC_P256)
        instance.revocations.publish_crl(name)
        click.echo(f"imported issuing CA {name!r}")

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
        from ztpki.server import serve as run_server

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

    @main.command()
    @click.option("--dir", "directory", required=True, type=click.Path(file_okay=False), help="Demo instance directory (created or reused).")
    @click.option("--port", type=int, default=8080, show_default=True)
    @click.option("--tls-port", type=int, help="HTTPS port (EST)  [default: PORT + 1]")
    @click.option("--no-serve", is_flag=True, help="Prepare DIR and demo.json, then exit.")
    def demo(directory: str, port: int, tls_port: int | None, no_serve: bool) -> None:
        """A demo PKI on 127.0.0.1: prints how to try each part with openssl, curl and strongSwan pki."""
        from ztpki.demo import run_demo

        run_demo(Path(directory), port=port, tls_port=tls_port, serve=not no_serve)


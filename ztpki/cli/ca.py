"""`ztpki init` and `ztpki ca list|add|import`: the instance and its
certification authorities (keys generated in, or adopted from, the token)."""

from __future__ import annotations

import json
from pathlib import Path
import os
from typing import Any

import click
from cryptography import x509

from ca import hierarchy
from hsm import KeyType
from ztpki.cli.admin import GetInstance, audited


def register(main: click.Group, get_instance: GetInstance) -> None:
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

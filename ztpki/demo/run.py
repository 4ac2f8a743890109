"""`ztpki demo`: prepare the demo instance (CA hierarchy, example
certificates, each protocol's part), write demo.json, print the
instructions and serve."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca.template import IssuanceOrder
from ztpki.config import CONFIG_NAME
from ztpki.demo.cmp import cmp_instructions, prepare_cmp
from ztpki.demo.est import (
    AutoApprover, ensure_approval_profile, ensure_demo_polling, ensure_tls, est_instructions, prepare_est,
)
from ztpki.demo.files import previous_info, private_dir, write_key
from ztpki.instance import Instance
from ztpki.setup_instance import init_instance


def _demo_certificate(instance: Instance, clients: Path, name: str, *, revoke: bool = False) -> dict[str, str]:
    """A client-side key (the device's, not the CA's) and its certificate."""
    key_path = clients / f"{name}.key"
    cert_path = clients / f"{name}.pem"
    if not cert_path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        order = IssuanceOrder(
            ca=instance.settings.default_ca,
            profile="client",
            subject=x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ztpki demo"),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]),
            public_key=key.public_key(),
            device_id=name,
        )
        issued = instance.cas.issue(order)
        write_key(key_path, key)
        cert_path.write_bytes(issued.certificate.public_bytes(serialization.Encoding.PEM))
        if revoke:
            instance.revocations.revoke(issued.serial, "keyCompromise")
    return {"cert": str(cert_path), "key": str(key_path)}


def prepare_demo(directory: Path, *, port: int, tls_port: int | None = None) -> dict[str, Any]:
    directory = directory.resolve()
    if not (directory / CONFIG_NAME).exists():
        init_instance(directory, port=port, organization="ztpki demo").close()
    ensure_approval_profile(directory)  # before the instance reads its profiles
    ensure_demo_polling(directory)
    instance = Instance.open(directory)
    try:
        settings = instance.settings
        base_url = settings.base_url
        clients = directory / "clients"
        clients.mkdir(exist_ok=True)
        private_dir(directory / "try")  # where the printed commands write
        good = _demo_certificate(instance, clients, "demo-device")
        revoked = _demo_certificate(instance, clients, "revoked-device", revoke=True)
        urls = instance.cas.urls
        tls = ensure_tls(instance, directory, tls_port or settings.port + 1)
        previous = previous_info(directory)
        cmp_info = prepare_cmp(instance, directory, previous)
        info: dict[str, Any] = {
            "home": str(directory),
            "root_ca": str(directory / "root.pem"),
            "issuing_ca": str(directory / f"{settings.default_ca}.pem"),
            "base_url": base_url,
            "crl_url": urls.crl_url(settings.default_ca),
            "root_crl_url": urls.crl_url("root"),
            "ocsp_url": urls.ocsp_url(),
            "examples": {"good_certificate": good, "revoked_certificate": revoked},
            **cmp_info,
            **prepare_est(instance, tls, previous, cmp_info["vendor"]["devices"][1]),
        }
        partial = directory / ".demo.json.tmp"
        partial.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        partial.replace(directory / "demo.json")
        return info
    finally:
        instance.close()


def instructions(info: dict[str, Any]) -> str:
    home = info["home"]
    ztpki = Path(sys.executable).parent / "ztpki"
    good = info["examples"]["good_certificate"]["cert"]
    revoked = info["examples"]["revoked_certificate"]["cert"]
    return f"""
ztpki demo PKI is serving on {info['base_url']} and {info['est_url'].split('/.well-known')[0]}   (Ctrl-C stops it)
Instance: {home}     demo.json: {home}/demo.json

Below, each part starts with its heading; jump to the protocol you came for:
  [1] Admin: issue from a CSR, OCSP, revoke, CRL     (ztpki CLI, openssl)
  [2] CMP for eNBs and small cells                   (openssl cmp; 3GPP TS 33.310)
  [3] EST for uCPE routers                           (curl + openssl, strongSwan pki)

== [1] Admin: issue from a CSR, OCSP, revoke, CRL ==

Issue a certificate from a CSR made by openssl:
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /tmp/srv.key \\
      -subj "/O=Example/CN=gw1.example.net" -out /tmp/srv.csr
  {ztpki} --home {home} issue --csr /tmp/srv.csr --profile server --out /tmp/srv.pem
  openssl verify -CAfile {info['root_ca']} -untrusted {info['issuing_ca']} /tmp/srv.pem

Ask OCSP (the URL is in the certificate's AIA):
  openssl ocsp -issuer {info['issuing_ca']} -cert {good} -url {info['ocsp_url']} -CAfile {info['root_ca']} -resp_text
  openssl ocsp -issuer {info['issuing_ca']} -cert {revoked} -url {info['ocsp_url']} -CAfile {info['root_ca']}

Revoke, then ask again (OCSP says revoked at once):
  {ztpki} --home {home} certs list
  {ztpki} --home {home} revoke SERIAL --reason keyCompromise

Fetch and check the CRL:
  curl -s {info['crl_url']} | openssl crl -inform DER -noout -text
  curl -s {info['crl_url']} -o /tmp/issuing.crl && openssl crl -inform DER -in /tmp/issuing.crl -CAfile {info['issuing_ca']} -noout

CA certificates: {info['base_url']}/ca/root.cer  {info['base_url']}/ca/issuing.cer

== [2] CMP for eNBs and small cells ==
{cmp_instructions(info)}
== [3] EST for uCPE routers ==
{est_instructions(info)}"""


def run_demo(directory: Path, *, port: int, tls_port: int | None = None, serve: bool = True) -> None:
    info = prepare_demo(directory, port=port, tls_port=tls_port)
    if not serve:
        print(instructions(info).replace("is serving on", "is ready (not serving) for"))
        return
    from ztpki.http.server import serve as run_server

    settings = Instance.open(Path(info["home"])).settings
    approver = AutoApprover(settings.home)

    def when_ready() -> None:
        # Started only now: the servers have forked, so no token or database
        # connection of this thread crosses a fork.
        approver.start()
        print(instructions(info), flush=True)

    code = run_server(settings.home, host="127.0.0.1", port=settings.port, workers=2, on_ready=when_ready)
    approver.stopped.set()
    sys.exit(code)

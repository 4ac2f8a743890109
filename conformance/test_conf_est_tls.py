"""EST over TLS (DESIGN F5, issue 6): `ztpki serve` terminating TLS itself,
and behind a real nginx, with curl, openssl and strongSwan's `pki`.

- ztpki's own TLS: an IDevID as TLS client certificate enrols (its
  intermediate reaches the core), the issued certificate re-enrols, HTTP
  Basic without a client certificate, cacerts/csrattrs/serverkeygen, 401s,
  a blocked device, 202 and then the certificate, and a client certificate
  outside the client CA bundle fails the handshake (Python's ssl cannot ask
  for a certificate without verifying it).
- The client-certificate header is believed only from [est] trusted_proxies
  (127.0.0.1 here): the same header sent from 127.0.0.2 is ignored, and EST
  on the plain port from anyone else is 403 (RFC 7030 §3.3).
- A revoked EST certificate as TLS client certificate with a good Basic
  password is refused, over ztpki's TLS and behind nginx (issue 10).
- nginx (`ssl_verify_client optional_no_ca`) in front of the plain HTTP port:
  its header is believed, an untrusted vendor's certificate reaches ztpki and
  gets 403, a header forged by the client is replaced by nginx.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import time
import tomllib
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import tomli_w

from conftools import Instance, Server, free_port, init_instance, run, split_pem, ztpki
from nginxtools import Nginx

EST = ".well-known/est"
APPROVAL_PROFILE = "ucpe-wait"


@dataclass(frozen=True)
class Setup:
    server: Server
    tls_port: int
    nginx: Nginx
    vendor: Path  # vroot.pem, and the devices' files
    user: str
    password: str
    waiting_user: str
    waiting_password: str

    @property
    def inst(self) -> Instance:
        return self.server.inst

    @property
    def tls_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}/{EST}"

    @property
    def plain_url(self) -> str:
        return f"{self.inst.base_url}/{EST}"

    @property
    def nginx_url(self) -> str:
        return f"{self.nginx.url}/{EST}"

    def device(self, name: str) -> tuple[Path, Path]:
        return self.vendor / f"{name}.pem", self.vendor / f"{name}.key"


# -- certificates made with openssl ------------------------------------------------------------

CA_EXT = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n"
DEVICE_EXT = ("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
              "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")


def _root(directory: Path, stem: str, name: str) -> None:
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", directory / f"{stem}.key", "-subj", f"/O=Acme/CN={name}", "-days", "3650",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-out", directory / f"{stem}.pem"])


def _signed(directory: Path, stem: str, subject: str, issuer: str, extensions: str, chain: tuple[str, ...] = ()) -> None:
    """directory/stem.pem (then the chain's certificates) and stem.key, signed by issuer."""
    ext = directory / f"{stem}.ext"
    ext.write_text(f"[x]\n{extensions}")
    run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", directory / f"{stem}.key", "-subj", subject, "-out", directory / f"{stem}.csr"])
    run(["openssl", "x509", "-req", "-in", directory / f"{stem}.csr", "-CA", directory / f"{issuer}.pem",
         "-CAkey", directory / f"{issuer}.key", "-CAcreateserial", "-days", "365",
         "-extfile", ext, "-extensions", "x", "-out", directory / f"{stem}.pem"])
    if chain:
        own = (directory / f"{stem}.pem").read_text()
        (directory / f"{stem}.pem").write_text(own + "".join((directory / f"{c}.pem").read_text() for c in chain))


def _device(directory: Path, serial: str, issuer: str, chain: tuple[str, ...] = ()) -> None:
    _signed(directory, serial, f"/O=Acme/serialNumber={serial}/CN=uCPE {serial}", issuer, DEVICE_EXT, chain)


def _credential(home: Path, serial: str) -> tuple[str, str]:
    out = ztpki("credentials", "create", "--device", serial, "--kind", "password", "--json", home=home).stdout
    created = json.loads(out[out.index("{"): out.rindex("}") + 1])
    return created["username"], created["password"]


def _configure_tls(inst: Instance, work: Path, tls_port: int) -> None:
    """A server certificate from the instance's own CA, [tls] on tls_port and
    127.0.0.1 as the trusted proxy, and a profile that waits for approval."""
    key, csr, cert = inst.home / "tls.key", work / "tls.csr", inst.home / "tls.pem"
    run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", key, "-subj", "/O=Example/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1", "-out", csr])
    key.chmod(0o600)
    ztpki("issue", "--csr", csr, "--profile", "server", "--out", cert, home=inst.home)
    config = tomllib.loads((inst.home / "ztpki.toml").read_text())
    config["tls"] = {"certificate": "tls.pem", "key": "tls.key", "port": tls_port}
    config["est"] = {**config.get("est", {}), "trusted_proxies": ["127.0.0.1"]}
    (inst.home / "ztpki.toml").write_text(tomli_w.dumps(config))
    profiles = (inst.home / "profiles.toml").read_text()
    ucpe = tomllib.loads(profiles)["profiles"]["ucpe"]
    waiting = tomli_w.dumps({"profiles": {APPROVAL_PROFILE: {**ucpe, "approval": "manual"}}})
    (inst.home / "profiles.toml").write_text(profiles + "\n" + waiting)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("est-tls")
    vendor = base / "vendor"
    vendor.mkdir()
    _root(vendor, "vroot", "Acme Root")
    _signed(vendor, "vca", "/O=Acme/CN=Acme Device CA", "vroot", CA_EXT)
    _device(vendor, "UCPE-1", "vca", chain=("vca",))  # with its intermediate, for ztpki's own TLS
    _device(vendor, "UCPE-2", "vroot")  # directly under the root, for nginx (no chain variable)
    _device(vendor, "UCPE-BLOCKED", "vroot")
    _root(vendor, "stranger", "Acme Root")  # same name, other key: a counterfeit vendor
    _device(vendor, "UCPE-FAKE", "stranger")
    for _attempt in range(3):
        inst = init_instance(base / f"home{_attempt}")
        tls_port = free_port()
        _configure_tls(inst, base, tls_port)
        ztpki("vendors", "add", "acme", "--root", vendor / "vroot.pem", home=inst.home)
        records = base / "devices.csv"
        rows = [f"{s},acme,ucpe" for s in ("UCPE-1", "UCPE-2", "UCPE-BLOCKED", "UCPE-FAKE")]
        rows += ["UCPE-PW,,ucpe", f"UCPE-WAIT,,{APPROVAL_PROFILE}"]
        records.write_text("serial,vendor,profile\n" + "\n".join(rows) + "\n")
        ztpki("devices", "import", records, home=inst.home)
        ztpki("devices", "block", "UCPE-BLOCKED", home=inst.home)
        user, password = _credential(inst.home, "UCPE-PW")
        waiting_user, waiting_password = _credential(inst.home, "UCPE-WAIT")
        server = Server(inst, base / f"serve{_attempt}.log")
        if server.start():
            break
    else:
        pytest.fail(f"no free ports for ztpki serve after 3 tries; last log:\n{server.log()}")
    nginx = Nginx(base / "nginx", inst.home / "tls.pem", inst.home / "tls.key", inst.port)
    try:
        nginx.start()
        yield Setup(server, tls_port, nginx, vendor, user, password, waiting_user, waiting_password)
    finally:
        nginx.stop()
        code = server.stop()
        assert code == 0, f"ztpki serve exited {code} on SIGTERM; its log:\n{server.log()}"


# -- EST with curl --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: str
    body: bytes


def csr_b64(work: Path, name: str, subject: str = "/CN=device", *extra: str) -> Path:
    """base64 of a DER PKCS#10 made by openssl req (RFC 7030 §4.2.1); the key beside it."""
    der = work / f"{name}.csr.der"
    run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", work / f"{name}.key", "-subj", subject, *extra, "-outform", "DER", "-out", der])
    body = work / f"{name}.csr"
    body.write_bytes(base64.encodebytes(der.read_bytes()))
    return body


def curl(setup: Setup, url: str, *args: object, body: Path | None = None, check_tls: bool = True) -> Reply:
    out, headers = Path(str(body or "/tmp/x") + ".reply"), Path(str(body or "/tmp/x") + ".headers")
    cmd: list[object] = ["curl", "-sS", "--cacert", setup.inst.root_pem, "-o", out, "-D", headers, "-w", "%{http_code}", *args]
    if body is not None:
        cmd += ["-H", "Content-Type: application/pkcs10", "--data-binary", f"@{body}"]
    proc = run([*cmd, url], check=False, timeout=60)
    if check_tls:
        assert proc.returncode == 0, f"curl exited {proc.returncode}: {proc.stderr}\n--- serve ---\n{setup.server.log()}"
    setup.server.assert_alive()
    status = int(proc.stdout or 0)
    return Reply(status, headers.read_text() if headers.exists() else "", out.read_bytes() if out.exists() else b"")


def certificates(reply: Reply, work: Path, name: str) -> Path:
    """The certs-only reply as PEM (openssl pkcs7 -print_certs)."""
    assert reply.status == 200, f"{reply.status} {reply.headers}\n{reply.body[:300]!r}"
    assert "application/pkcs7-mime" in reply.headers, reply.headers
    der = work / f"{name}.p7.der"
    der.write_bytes(base64.b64decode(reply.body))
    pem = work / f"{name}.pem"
    run(["openssl", "pkcs7", "-inform", "DER", "-in", der, "-print_certs", "-out", pem])
    return pem


def verify(setup: Setup, pem: Path) -> str:
    out = run(["openssl", "verify", "-CAfile", setup.inst.root_pem, "-untrusted", setup.inst.issuing_pem, pem]).stdout
    assert out.strip().endswith("OK"), out
    return run(["openssl", "x509", "-in", pem, "-noout", "-subject"]).stdout


def escaped(pem: Path) -> str:
    """What nginx's $ssl_client_escaped_cert holds: the URL-escaped PEM."""
    return urllib.parse.quote(split_pem(pem.read_text())[0] + "\n", safe="")


# -- ztpki's own TLS ------------------------------------------------------------------------------


def test_idevid_as_tls_client_certificate_enrols_and_reenrols(setup: Setup, workdir: Path) -> None:
    cert, key = setup.device("UCPE-1")  # device certificate + its intermediate
    reply = curl(setup, f"{setup.tls_url}/simpleenroll", "--cert", cert, "--key", key, body=csr_b64(workdir, "one"))
    issued = certificates(reply, workdir, "one")
    assert "UCPE-1" in verify(setup, issued)
    # simplereenroll (RFC 7030 §4.2.2): the issued certificate as TLS client certificate, a new key.
    run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", workdir / "two.key"])
    # OpenSSL 3.0's -x509toreq writes PEM after a text dump whatever -outform says: openssl req cleans it.
    run(["openssl", "x509", "-x509toreq", "-in", issued, "-signkey", workdir / "two.key", "-out", workdir / "two.pem"])
    run(["openssl", "req", "-in", workdir / "two.pem", "-outform", "DER", "-out", workdir / "two.der"])
    (workdir / "two.csr").write_bytes(base64.encodebytes((workdir / "two.der").read_bytes()))
    reply = curl(setup, f"{setup.tls_url}/simplereenroll", "--cert", issued, "--key", workdir / "one.key",
                 body=workdir / "two.csr")
    renewed = certificates(reply, workdir, "two")
    assert "UCPE-1" in verify(setup, renewed)
    assert run(["openssl", "x509", "-in", renewed, "-noout", "-serial"]).stdout != \
        run(["openssl", "x509", "-in", issued, "-noout", "-serial"]).stdout


def test_without_client_certificate_basic_authenticates_and_nothing_gets_401(setup: Setup, workdir: Path) -> None:
    body = csr_b64(workdir, "pw")
    refused = curl(setup, f"{setup.tls_url}/simpleenroll", body=body)
    assert refused.status == 401 and "www-authenticate: basic" in refused.headers.lower(), refused
    wrong = curl(setup, f"{setup.tls_url}/simpleenroll", "--user", f"{setup.user}:wrong", body=body)
    assert wrong.status == 401, wrong
    reply = curl(setup, f"{setup.tls_url}/simpleenroll", "--user", f"{setup.user}:{setup.password}", body=body)
    assert "UCPE-PW" in verify(setup, certificates(reply, workdir, "pw"))


def test_cacerts_csrattrs_and_serverkeygen_over_tls(setup: Setup, workdir: Path) -> None:
    chain = certificates(curl(setup, f"{setup.tls_url}/cacerts"), workdir, "cacerts").read_text()
    assert setup.inst.issuing_pem.read_text().strip() in chain
    attrs = curl(setup, f"{setup.tls_url}/csrattrs")
    assert attrs.status == 200 and "application/csrattrs" in attrs.headers
    (workdir / "attrs.der").write_bytes(base64.b64decode(attrs.body))
    assert "challengePassword" in run(["openssl", "asn1parse", "-inform", "DER", "-in", workdir / "attrs.der"]).stdout
    cert, key = setup.device("UCPE-1")
    generated = curl(setup, f"{setup.tls_url}/serverkeygen", "--cert", cert, "--key", key, body=csr_b64(workdir, "skg"))
    assert generated.status == 200 and "multipart/mixed" in generated.headers, generated
    assert b"application/pkcs8" in generated.body and b"application/pkcs7-mime" in generated.body


def test_a_blocked_device_gets_403(setup: Setup, workdir: Path) -> None:
    cert, key = setup.device("UCPE-BLOCKED")
    reply = curl(setup, f"{setup.tls_url}/simpleenroll", "--cert", cert, "--key", key, body=csr_b64(workdir, "b"))
    assert reply.status == 403, reply


def test_a_dns_name_under_another_domain_gets_400_and_an_audit_record(setup: Setup, workdir: Path) -> None:
    # Issue 10 finding 2: '<serial>.<any domain>' was kept, only the first label compared.
    cert, key = setup.device("UCPE-1")
    for name in ("UCPE-1.evil.example", "ucpe-1.evil.example"):
        body = csr_b64(workdir, "evil", "/CN=UCPE-1", "-addext", f"subjectAltName=DNS:{name}")
        reply = curl(setup, f"{setup.tls_url}/simpleenroll", "--cert", cert, "--key", key, body=body)
        assert reply.status == 400 and b"does not name device UCPE-1" in reply.body, reply
        records = json.loads(ztpki("audit", "list", "--json", "--device", "UCPE-1", home=setup.inst.home).stdout)
        assert (records[-1]["outcome"], records[-1]["reason"], records[-1]["protocol"]) == ("rejected", "policy_violation", "est")


def test_a_request_waiting_for_approval_gets_202_then_its_certificate(setup: Setup, workdir: Path) -> None:
    url = f"{setup.tls_url}/{APPROVAL_PROFILE}/simpleenroll"
    auth = ("--user", f"{setup.waiting_user}:{setup.waiting_password}")
    body = csr_b64(workdir, "wait")
    first = curl(setup, url, *auth, body=body)
    assert first.status == 202 and re.search(r"(?im)^retry-after: \d+", first.headers), first
    requests = json.loads(ztpki("requests", "list", "--status", "pending", "--json", home=setup.inst.home).stdout)
    [waiting] = [r for r in requests if r["device"] == "UCPE-WAIT"]
    ztpki("requests", "approve", waiting["id"], home=setup.inst.home)
    second = curl(setup, url, *auth, body=body)
    assert "UCPE-WAIT" in verify(setup, certificates(second, workdir, "wait"))


def test_a_client_certificate_outside_the_bundle_fails_the_handshake(setup: Setup, workdir: Path) -> None:
    cert, key = setup.device("UCPE-FAKE")
    reply = curl(setup, f"{setup.tls_url}/simpleenroll", "--cert", cert, "--key", key,
                 body=csr_b64(workdir, "fake"), check_tls=False)
    assert reply.status == 0  # no HTTP at all: Python's ssl verifies every certificate it asks for
    deadline = time.monotonic() + 10  # the worker logs after curl has seen the alert
    while "CERTIFICATE_VERIFY_FAILED" not in setup.server.log():
        assert time.monotonic() < deadline, setup.server.log()
        time.sleep(0.1)


# -- the header: believed from trusted proxies only ----------------------------------------------


def test_a_certificate_header_from_an_untrusted_address_is_ignored(setup: Setup, workdir: Path) -> None:
    cert, _key = setup.device("UCPE-2")  # no key needed: that is the attack
    forged = ("-H", f"X-SSL-Client-Cert: {escaped(cert)}")
    body = csr_b64(workdir, "forged")
    ignored = curl(setup, f"{setup.plain_url}/simpleenroll", "--interface", "127.0.0.2", *forged, body=body)
    assert ignored.status == 403 and b"HTTPS" in ignored.body, ignored  # not a proxy: plain HTTP, refused
    assert "not a trusted proxy" in setup.server.log()
    # The same header from 127.0.0.1, [est] trusted_proxies, is believed.
    believed = curl(setup, f"{setup.plain_url}/simpleenroll", *forged, body=body)
    assert "UCPE-2" in verify(setup, certificates(believed, workdir, "believed"))


def test_over_own_tls_a_certificate_header_is_never_read(setup: Setup, workdir: Path) -> None:
    cert, _key = setup.device("UCPE-2")
    reply = curl(setup, f"{setup.tls_url}/simpleenroll", "-H", f"X-SSL-Client-Cert: {escaped(cert)}",
                 body=csr_b64(workdir, "tls-forged"))
    assert reply.status == 401, reply


# -- issue 10 finding 7: EST over TLS only; failed evidence is never replaced ----------------------


def _audit_since(setup: Setup, seq: int) -> list[dict[str, object]]:
    records = json.loads(ztpki("audit", "list", "--json", "--after", seq, home=setup.inst.home).stdout)
    assert isinstance(records, list)
    return records


def _noise_count(setup: Setup, reason: str) -> int:
    """EST refusals nobody authenticated, counted per source and reason
    (`ztpki audit noise`): they are not chained one record each."""
    out = ztpki("audit", "noise", "--json", home=setup.inst.home).stdout
    rows = json.loads(out[out.index("[") :])
    return sum(int(r["count"]) for r in rows if (r["protocol"], r["reason"]) == ("est", reason))


def _last_seq(setup: Setup) -> int:
    records = _audit_since(setup, 0)
    return int(str(records[-1]["seq"])) if records else 0


def _certificates_of(setup: Setup, device: str) -> list[dict[str, object]]:
    out = ztpki("certs", "list", "--device", device, "--json", home=setup.inst.home).stdout
    found = json.loads(out)
    assert isinstance(found, list), out
    return found


def test_plain_http_est_from_an_untrusted_peer_is_403_even_with_a_good_password(setup: Setup, workdir: Path) -> None:
    user, password = _credential(setup.inst.home, "UCPE-PW")
    before, counted = len(_certificates_of(setup, "UCPE-PW")), _noise_count(setup, "tls_required")
    body = csr_b64(workdir, "plain")
    plain = ("--interface", "127.0.0.2")
    reply = curl(setup, f"{setup.plain_url}/simpleenroll", *plain, "--user", f"{user}:{password}", body=body)
    assert reply.status == 403 and "text/plain" in reply.headers and b"HTTPS" in reply.body, reply
    assert curl(setup, f"{setup.plain_url}/cacerts", *plain).status == 403
    assert curl(setup, f"{setup.plain_url}/csrattrs", *plain).status == 403
    # A trusted proxy that says it forwarded plain HTTP is refused the same way.
    said = curl(setup, f"{setup.plain_url}/simpleenroll", "-H", "X-Forwarded-Proto: http",
                "--user", f"{user}:{password}", body=body)
    assert said.status == 403, said
    assert len(_certificates_of(setup, "UCPE-PW")) == before
    assert _noise_count(setup, "tls_required") == counted + 4
    # The same credential over HTTPS still enrols: only the transport was refused.
    good = curl(setup, f"{setup.tls_url}/simpleenroll", "--user", f"{user}:{password}", body=body)
    assert "UCPE-PW" in verify(setup, certificates(good, workdir, "plain"))


def test_a_revoked_est_certificate_with_a_good_password_is_refused_over_tls_and_behind_nginx(
    setup: Setup, workdir: Path
) -> None:
    user, password = _credential(setup.inst.home, "UCPE-PW")
    first = curl(setup, f"{setup.tls_url}/simpleenroll", "--user", f"{user}:{password}", body=csr_b64(workdir, "rv"))
    issued = certificates(first, workdir, "rv")
    serial = run(["openssl", "x509", "-in", issued, "-noout", "-serial"]).stdout.strip().split("=", 1)[1]
    ztpki("revoke", serial, "--reason", "keyCompromise", home=setup.inst.home)
    before, counted = len(_certificates_of(setup, "UCPE-PW")), _noise_count(setup, "certificate_revoked")
    both = ("--cert", issued, "--key", workdir / "rv.key", "--user", f"{user}:{password}")
    for name, url in (("rv-tls", setup.tls_url), ("rv-ngx", setup.nginx_url)):
        reply = curl(setup, f"{url}/simpleenroll", *both, body=csr_b64(workdir, name))
        assert reply.status == 403 and b"certificate_revoked" in reply.body, (name, reply, setup.nginx.log())
        assert b"pkcs7" not in reply.headers.encode().lower()
    assert len(_certificates_of(setup, "UCPE-PW")) == before
    assert _noise_count(setup, "certificate_revoked") == counted + 2
    # The password alone still works: it was the failed certificate that refused.
    alone = curl(setup, f"{setup.tls_url}/simpleenroll", "--user", f"{user}:{password}", body=csr_b64(workdir, "rv-pw"))
    assert "UCPE-PW" in verify(setup, certificates(alone, workdir, "rv-pw"))


# -- behind nginx ---------------------------------------------------------------------------------


def test_behind_nginx_the_client_certificate_is_believed(setup: Setup, workdir: Path) -> None:
    cert, key = setup.device("UCPE-2")
    reply = curl(setup, f"{setup.nginx_url}/simpleenroll", "--cert", cert, "--key", key, body=csr_b64(workdir, "ngx"))
    assert "UCPE-2" in verify(setup, certificates(reply, workdir, "ngx")), setup.nginx.log()


def test_behind_nginx_an_untrusted_vendor_certificate_gets_403(setup: Setup, workdir: Path) -> None:
    cert, key = setup.device("UCPE-FAKE")
    reply = curl(setup, f"{setup.nginx_url}/simpleenroll", "--cert", cert, "--key", key, body=csr_b64(workdir, "ngx-fake"))
    assert reply.status == 403, (reply, setup.nginx.log())
    assert "text/plain" in reply.headers, reply.headers
    assert "not_authorized" in setup.server.log() or reply.body, reply


def test_behind_nginx_a_header_sent_by_the_client_is_replaced(setup: Setup, workdir: Path) -> None:
    cert, _key = setup.device("UCPE-2")
    reply = curl(setup, f"{setup.nginx_url}/simpleenroll", "-H", f"X-SSL-Client-Cert: {escaped(cert)}",
                 "-H", f"X-SSL-Client-Chain: {escaped(setup.inst.issuing_pem)}", body=csr_b64(workdir, "ngx-forged"))
    assert reply.status == 401, reply


# -- strongSwan pki --------------------------------------------------------------------------------


def pki(*args: object) -> str:
    """strongSwan 5.9's pki; its --url is the server: it appends /.well-known/est/<operation>."""
    proc = run(["pki", *args], check=False, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # pki --est checks the issued certificate against its --cacert files: it
    # needs the issuing CA beside the root, else "Issued certificate is not
    # trusted" although the certificate is fine (issue 11).
    assert "not trusted" not in proc.stderr + proc.stdout, proc.stderr
    return proc.stdout


def test_strongswan_pki_estca_and_est_with_userpass_then_client_certificate(setup: Setup, workdir: Path) -> None:
    server = f"https://127.0.0.1:{setup.tls_port}"
    pki("--estca", "--url", server, "--cacert", setup.inst.root_pem, "--caout", workdir / "ca.pem",
        "--outform", "pem", "--force")
    assert any(p.name.startswith("ca") for p in workdir.iterdir())
    user, password = _credential(setup.inst.home, "UCPE-PW")
    (workdir / "k.pem").write_text(pki("--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem"))
    (workdir / "r.pem").write_text(pki("--req", "--in", workdir / "k.pem", "--type", "ecdsa", "--dn", "CN=pki", "--outform", "pem"))
    issued = workdir / "pki.pem"
    cacerts = ("--cacert", setup.inst.root_pem, "--cacert", setup.inst.issuing_pem)
    issued.write_text(pki("--est", "--url", server, *cacerts, "--userpass",
                          f"{user}:{password}", "--in", workdir / "r.pem", "--outform", "pem"))
    assert "UCPE-PW" in verify(setup, issued)
    # Renewal: pki authenticates TLS with the current certificate and key.
    (workdir / "k2.pem").write_text(pki("--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem"))
    run(["openssl", "x509", "-x509toreq", "-in", issued, "-signkey", workdir / "k2.pem", "-out", workdir / "r2.pem"])
    renewed = workdir / "pki2.pem"
    renewed.write_text(pki("--est", "--url", server, *cacerts, "--cert", issued,
                           "--key", workdir / "k.pem", "--in", workdir / "r2.pem", "--outform", "pem"))
    assert "UCPE-PW" in verify(setup, renewed)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


# -- the client CA bundle follows the vendor anchors ------------------------------------------------


def test_a_vendor_added_while_serving_is_in_the_bundle_after_sighup(setup: Setup, workdir: Path) -> None:
    _root(workdir, "nroot", "Newco Root")
    _device(workdir, "NEWCO-1", "nroot")
    (workdir / "newco.csv").write_text("serial,vendor,profile\nNEWCO-1,newco,ucpe\n")
    ztpki("vendors", "add", "newco", "--root", workdir / "nroot.pem", home=setup.inst.home)
    ztpki("devices", "import", workdir / "newco.csv", home=setup.inst.home)
    args = ("--cert", workdir / "NEWCO-1.pem", "--key", workdir / "NEWCO-1.key")
    before = curl(setup, f"{setup.tls_url}/simpleenroll", *args, body=csr_b64(workdir, "n1"), check_tls=False)
    assert before.status == 0  # the bundle was written at start
    assert setup.server.proc is not None
    setup.server.proc.send_signal(signal.SIGHUP)  # the supervisor rewrites it, gunicorn renews its workers
    deadline = time.monotonic() + 20
    while True:
        after = curl(setup, f"{setup.tls_url}/simpleenroll", *args, body=csr_b64(workdir, "n2"), check_tls=False)
        if after.status or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert "NEWCO-1" in verify(setup, certificates(after, workdir, "n2")), setup.server.log()

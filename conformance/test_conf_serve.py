"""A running `ztpki serve` asked by openssl ocsp and curl: OCSP (POST and GET),
revocation seen at once, certificateHold and its release, CRLs from the CLI
and over HTTP, and a malformed OCSP request."""

from __future__ import annotations

import base64
import random
import re
import urllib.parse
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import ocsp

from conftools import (
    Server,
    crl_entries,
    crl_url_of,
    issue,
    ocsp_url_of,
    openssl_csr,
    run,
    ztpki,
)
from conftools import served, workdir  # noqa: F401  (fixtures)

# Enough queries that both gunicorn workers very likely answer at least one.
REPEAT = 4


def new_leaf(server: Server, workdir: Path, name: str, key: str = "ec-p256") -> tuple[Path, str]:
    leaf = workdir / f"{name}.pem"
    serial = issue(server.inst, openssl_csr(workdir, name, f"{name}.example.net", key), leaf)
    return leaf, serial


def ocsp_post(server: Server, leaf: Path) -> str:
    """`openssl ocsp` to the AIA URL of the certificate (POST, with a nonce)."""
    url = ocsp_url_of(leaf)
    proc = run([
        "openssl", "ocsp", "-issuer", server.inst.issuing_pem, "-cert", leaf,
        "-url", url, "-CAfile", server.inst.root_pem,
    ], check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out + "\n--- server log ---\n" + server.log()
    assert "Response verify OK" in out, out
    assert "WARNING" not in out, out  # e.g. "no nonce in response"
    return out


def ocsp_get(server: Server, leaf: Path, workdir: Path) -> str:
    """RFC 6960 A.1 GET with curl: URL/<url-encoded base64 of the DER request>."""
    request = workdir / "get-req.der"
    response = workdir / "get-resp.der"
    run(["openssl", "ocsp", "-issuer", server.inst.issuing_pem, "-cert", leaf, "-no_nonce", "-reqout", request])
    encoded = urllib.parse.quote(base64.b64encode(request.read_bytes()).decode(), safe="")
    url = f"{ocsp_url_of(leaf).rstrip('/')}/{encoded}"
    status = run(["curl", "-sS", "-o", response, "-w", "%{http_code} %{content_type}", url]).stdout
    assert status == "200 application/ocsp-response", status + "\n" + server.log()
    proc = run([
        "openssl", "ocsp", "-respin", response, "-issuer", server.inst.issuing_pem, "-cert", leaf,
        "-no_nonce", "-CAfile", server.inst.root_pem,
    ], check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Response verify OK" in out, out
    return out


def ocsp_get_with_nonce(server: Server, leaf: Path, workdir: Path) -> tuple[str, x509.ReasonFlags | None]:
    """GET with a nonce whose base64 needs percent-encoding ('+' or '/'); the
    response is read with cryptography (openssl cannot pair it with -cert)."""
    request = workdir / "nonce-req.der"
    for _ in range(20):
        run(["openssl", "ocsp", "-issuer", server.inst.issuing_pem, "-cert", leaf, "-reqout", request])
        encoded = base64.b64encode(request.read_bytes()).decode()
        if "+" in encoded or "/" in encoded:
            break
    response = workdir / "nonce-resp.der"
    url = f"{ocsp_url_of(leaf).rstrip('/')}/{urllib.parse.quote(encoded, safe='')}"
    assert run(["curl", "-sS", "-o", response, "-w", "%{http_code}", url]).stdout == "200"
    asked = ocsp.load_der_ocsp_request(request.read_bytes())
    answer = ocsp.load_der_ocsp_response(response.read_bytes())
    assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert answer.serial_number == asked.serial_number
    assert (
        answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        == asked.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    )
    status = answer.certificate_status.name.lower()
    return status, answer.revocation_reason if status == "revoked" else None


def status_of(out: str, leaf: Path) -> str:
    m = re.search(rf"^{re.escape(str(leaf))}: (\w+)", out, re.M)
    assert m, out
    return m.group(1)


def reason_of(out: str) -> str | None:
    m = re.search(r"Reason: (\w+)", out)
    return m.group(1) if m else None


def test_health_and_served_urls(served: Server, workdir: Path) -> None:
    leaf, _ = new_leaf(served, workdir, "urls")
    assert ocsp_url_of(leaf) == f"{served.url}/ocsp"
    assert crl_url_of(leaf) == f"{served.url}/crl/issuing.crl"
    assert run(["curl", "-sS", "-f", f"{served.url}/health"]).stdout.strip() == "ok"


@pytest.mark.parametrize("key", ["ec-p256", "rsa-2048"])
def test_ocsp_good_then_revoked_at_once(served: Server, workdir: Path, key: str) -> None:
    leaf, serial = new_leaf(served, workdir, f"ocsp-{key}", key)
    for _ in range(REPEAT):
        out = ocsp_post(served, leaf)
        assert status_of(out, leaf) == "good", out
    assert status_of(ocsp_get(served, leaf, workdir), leaf) == "good"
    assert ocsp_get_with_nonce(served, leaf, workdir) == ("good", None)

    ztpki("revoke", serial, "--reason", "keyCompromise", home=served.inst.home)

    for _ in range(REPEAT):  # no sleep: every worker must see it now
        out = ocsp_post(served, leaf)
        assert status_of(out, leaf) == "revoked", out
        assert reason_of(out) == "keyCompromise", out
    out = ocsp_get(served, leaf, workdir)
    assert status_of(out, leaf) == "revoked" and reason_of(out) == "keyCompromise", out
    assert ocsp_get_with_nonce(served, leaf, workdir) == ("revoked", x509.ReasonFlags.key_compromise)
    served.assert_alive()


def test_ocsp_hold_then_release(served: Server, workdir: Path) -> None:
    leaf, serial = new_leaf(served, workdir, "hold")
    assert status_of(ocsp_post(served, leaf), leaf) == "good"

    ztpki("revoke", serial, "--reason", "certificateHold", home=served.inst.home)
    for _ in range(REPEAT):
        out = ocsp_post(served, leaf)
        assert status_of(out, leaf) == "revoked" and reason_of(out) == "certificateHold", out
    out = ocsp_get(served, leaf, workdir)
    assert status_of(out, leaf) == "revoked" and reason_of(out) == "certificateHold", out

    ztpki("revoke", serial, "--reason", "removeFromCRL", home=served.inst.home)
    for _ in range(REPEAT):
        out = ocsp_post(served, leaf)
        assert status_of(out, leaf) == "good", out
    assert status_of(ocsp_get(served, leaf, workdir), leaf) == "good"
    served.assert_alive()


def test_crl_from_cli_and_over_http(served: Server, workdir: Path) -> None:
    inst = served.inst
    leaf, serial = new_leaf(served, workdir, "crl")
    kept, kept_serial = new_leaf(served, workdir, "crl-kept")
    ztpki("revoke", serial, "--reason", "keyCompromise", home=inst.home)

    crl = workdir / "x.crl"
    ztpki("crl", "--out", crl, home=inst.home)
    check = run(["openssl", "crl", "-inform", "DER", "-in", crl, "-CAfile", inst.issuing_pem, "-noout"], check=False)
    assert check.returncode == 0 and "verify OK" in check.stdout + check.stderr, check.stdout + check.stderr
    text = run(["openssl", "crl", "-inform", "DER", "-in", crl, "-noout", "-text"]).stdout
    entries = crl_entries(text)
    assert entries.get(serial) == "Key Compromise", text
    assert kept_serial not in entries

    url = crl_url_of(leaf)
    fetched = workdir / "fetched.crl"
    meta = run(["curl", "-sS", "-o", fetched, "-w", "%{http_code} %{content_type}", url]).stdout
    assert meta == "200 application/pkix-crl", meta
    check = run(["openssl", "crl", "-inform", "DER", "-in", fetched, "-CAfile", inst.issuing_pem, "-noout"], check=False)
    assert check.returncode == 0 and "verify OK" in check.stdout + check.stderr, check.stdout + check.stderr
    text = run(["openssl", "crl", "-inform", "DER", "-in", fetched, "-noout", "-text"]).stdout
    assert crl_entries(text).get(serial) == "Key Compromise", text
    # And a CRL signed by someone else does not verify against the issuing CA.
    wrong = run(["openssl", "crl", "-inform", "DER", "-in", fetched, "-CAfile", inst.root_pem, "-noout"], check=False)
    assert "verify OK" not in wrong.stdout + wrong.stderr
    served.assert_alive()


def test_second_issuing_ca_is_served(served: Server, workdir: Path) -> None:
    # The `served` fixture ran `ztpki ca add phones` before starting the server.
    inst = served.inst
    phones = inst.home / "phones.pem"
    leaf = workdir / "phone.pem"
    serial = issue(inst, openssl_csr(workdir, "phone", "phone-7", "rsa-2048"), leaf, "phone", "--ca", "phones")
    run(["openssl", "verify", "-CAfile", inst.root_pem, "-untrusted", phones, leaf])
    assert ocsp_url_of(leaf) == f"{served.url}/ocsp"

    def ask() -> str:
        proc = run([
            "openssl", "ocsp", "-issuer", phones, "-cert", leaf, "-url", ocsp_url_of(leaf), "-CAfile", inst.root_pem,
        ], check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "Response verify OK" in out, out + served.log()
        return out

    for _ in range(REPEAT):
        assert status_of(ask(), leaf) == "good"
    ztpki("revoke", serial, "--reason", "superseded", home=inst.home)
    for _ in range(REPEAT):
        out = ask()
        assert status_of(out, leaf) == "revoked" and reason_of(out) == "superseded", out

    url = crl_url_of(leaf)
    assert url == f"{served.url}/crl/phones.crl"
    fetched = workdir / "phones.crl"
    assert run(["curl", "-sS", "-o", fetched, "-w", "%{http_code}", url]).stdout == "200"
    check = run(["openssl", "crl", "-inform", "DER", "-in", fetched, "-CAfile", phones, "-noout"], check=False)
    assert "verify OK" in check.stdout + check.stderr, check.stdout + check.stderr
    text = run(["openssl", "crl", "-inform", "DER", "-in", fetched, "-noout", "-text"]).stdout
    assert crl_entries(text).get(serial) == "Superseded", text
    served.assert_alive()


def test_malformed_ocsp_request(served: Server, workdir: Path) -> None:
    junk = workdir / "junk.bin"
    junk.write_bytes(random.Random(6960).randbytes(300))
    response = workdir / "junk-resp.der"
    meta = run([
        "curl", "-sS", "-o", response, "-w", "%{http_code} %{content_type}",
        "-H", "Content-Type: application/ocsp-request", "--data-binary", f"@{junk}", f"{served.url}/ocsp",
    ]).stdout
    assert meta == "200 application/ocsp-response", meta + "\n" + served.log()

    parsed = ocsp.load_der_ocsp_response(response.read_bytes())
    assert parsed.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    shown = run(["openssl", "ocsp", "-respin", response, "-resp_text", "-noverify"], check=False)
    assert "malformedrequest" in (shown.stdout + shown.stderr).lower(), shown.stdout + shown.stderr

    # The server keeps serving, and answers real requests.
    served.assert_alive()
    assert run(["curl", "-sS", "-f", f"{served.url}/health"]).stdout.strip() == "ok"
    leaf, _ = new_leaf(served, workdir, "after-junk")
    assert status_of(ocsp_post(served, leaf), leaf) == "good"
    assert "Traceback" not in served.log()

"""A running `ztpki serve` asked about several certificates at once, and sent
the OCSP requests that used to crash it (security issue 10, finding 3): two or
more certIDs, an empty requestList, a duplicate nonce, a negative serial, more
certIDs than the cap. RFC 6960 §4.1-4.2: one signed response answering every
certID; malformedRequest for what is malformed; never a 5xx or a traceback."""

from __future__ import annotations

import base64
import re
import urllib.parse
from pathlib import Path

from asn1crypto import ocsp as asn1_ocsp
from cryptography.x509 import ocsp

from conftools import Server, issue, ocsp_url_of, openssl_csr, run, ztpki
from conftools import served, workdir  # noqa: F401  (fixtures)

MAX_CERT_IDS = 8  # ca/ocsp_request.py


def new_leaf(server: Server, workdir: Path, name: str) -> tuple[Path, str]:
    leaf = workdir / f"{name}.pem"
    return leaf, issue(server.inst, openssl_csr(workdir, name, f"{name}.example.net"), leaf)


def statuses(out: str) -> dict[str, str]:
    return dict(re.findall(r"^(\S+): (good|revoked|unknown)$", out, re.M))


def ask_openssl(server: Server, *args: object) -> str:
    proc = run(["openssl", "ocsp", "-issuer", server.inst.issuing_pem, *args,
                "-url", f"{server.url}/ocsp", "-CAfile", server.inst.root_pem, "-resp_text"], check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out + "\n--- server log ---\n" + server.log()
    assert "Response verify OK" in out, out
    assert "WARNING" not in out, out  # e.g. "no nonce in response"
    return out


def test_openssl_with_two_certs_gets_one_verified_response_with_both_statuses(served: Server, workdir: Path) -> None:
    revoked, revoked_serial = new_leaf(served, workdir, "two-revoked")
    good, _ = new_leaf(served, workdir, "two-good")
    ztpki("revoke", revoked_serial, "--reason", "keyCompromise", home=served.inst.home)
    for nonce in ([], ["-no_nonce"]):
        for _ in range(2):  # both gunicorn workers, likely
            out = ask_openssl(served, "-cert", revoked, "-cert", good, *nonce)
            assert statuses(out) == {str(revoked): "revoked", str(good): "good"}, out
            assert out.count("Cert Status:") == 2, out  # one response, two SingleResponses
            assert "Reason: keyCompromise" in out, out
    # openssl -serial: a certID for a serial this CA never issued.
    out = ask_openssl(served, "-cert", good, "-cert", revoked, "-serial", "0x5EED")
    assert statuses(out) == {str(good): "good", str(revoked): "revoked", "0x5EED": "unknown"}, out
    served.assert_alive()
    assert "Traceback" not in served.log()


def _request_of(server: Server, leaf: Path, workdir: Path) -> asn1_ocsp.OCSPRequest:
    request = workdir / "one.der"
    run(["openssl", "ocsp", "-issuer", server.inst.issuing_pem, "-cert", leaf, "-no_nonce", "-reqout", request])
    return asn1_ocsp.OCSPRequest.load(request.read_bytes())


def _der(cert_ids: list[asn1_ocsp.CertId], nonces: list[bytes]) -> bytes:
    tbs: dict[str, object] = {"request_list": [{"req_cert": c.copy()} for c in cert_ids]}
    if nonces:
        tbs["request_extensions"] = [{"extn_id": "nonce", "critical": False, "extn_value": n} for n in nonces]
    return bytes(asn1_ocsp.OCSPRequest({"tbs_request": tbs}).dump())


def _post(server: Server, body: bytes, workdir: Path, get: bool = False) -> ocsp.OCSPResponse:
    sent, answer = workdir / "sent.der", workdir / "answer.der"
    sent.write_bytes(body)
    if get:
        url = f"{server.url}/ocsp/{urllib.parse.quote(base64.b64encode(body).decode(), safe='')}"
        command = ["curl", "-sS", "-o", answer, "-w", "%{http_code} %{content_type}", url]
    else:
        command = ["curl", "-sS", "-o", answer, "-w", "%{http_code} %{content_type}",
                   "-H", "Content-Type: application/ocsp-request", "--data-binary", f"@{sent}", f"{server.url}/ocsp"]
    meta = run(command).stdout
    assert meta == "200 application/ocsp-response", meta + "\n" + server.log()
    return ocsp.load_der_ocsp_response(answer.read_bytes())


def test_the_requests_that_crashed_the_responder_get_ocsp_answers(served: Server, workdir: Path) -> None:
    leaf, _ = new_leaf(served, workdir, "crash")
    assert ocsp_url_of(leaf) == f"{served.url}/ocsp"
    one = _request_of(served, leaf, workdir)["tbs_request"]["request_list"][0]["req_cert"]
    negative = asn1_ocsp.CertId({
        "hash_algorithm": one["hash_algorithm"].copy(), "issuer_name_hash": one["issuer_name_hash"].native,
        "issuer_key_hash": one["issuer_key_hash"].native, "serial_number": -5,
    })
    malformed = {
        "empty requestList": _der([], []),
        "duplicate nonce, one certID": _der([one], [b"first-nonce", b"other-nonce"]),
        "duplicate nonce, two certIDs": _der([one, one], [b"first-nonce", b"other-nonce"]),
        "nonce of 33 octets": _der([one, one], [b"n" * 33]),
        f"{MAX_CERT_IDS + 1} certIDs": _der([one] * (MAX_CERT_IDS + 1), []),
        "64 KiB of certIDs": _der([one] * 700, []),
    }
    for get in (False, True):
        for name, body in malformed.items():
            if get and len(body) > 2048:
                continue  # gunicorn refuses a request line past 4 KiB itself (414)
            answer = _post(served, body, workdir, get)
            assert answer.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST, name
        answer = _post(served, _der([negative], [b"a-nonce"]), workdir, get)
        assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        assert [(r.serial_number, r.certificate_status) for r in answer.responses] == [(-5, ocsp.OCSPCertStatus.UNKNOWN)]
        answer = _post(served, _der([one] * MAX_CERT_IDS, []), workdir, get)
        assert [r.certificate_status for r in answer.responses] == [ocsp.OCSPCertStatus.GOOD] * MAX_CERT_IDS
    # openssl reads the last answer (the cap-sized one) as successful too.
    shown = run(["openssl", "ocsp", "-respin", workdir / "answer.der", "-resp_text", "-noverify"], check=False)
    assert "OCSP Response Status: successful" in shown.stdout, shown.stdout + shown.stderr
    served.assert_alive()
    assert "Traceback" not in served.log()

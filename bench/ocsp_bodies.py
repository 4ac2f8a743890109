#!/usr/bin/env python3
"""Helper of bench/ocsp.sh (not part of the test run).

    ocsp_bodies.py prepare --home DIR --port N --out DIR [--certs 300] [--revoked 30]
                           [--nonce-bodies 2000] [--key-type ec-p256]
    ocsp_bodies.py check --url http://127.0.0.1:N --out DIR
    ocsp_bodies.py profile --home DIR --out DIR [--seconds 2] [--rounds 3] [--cprofile N]

`prepare` makes a fresh instance (init_instance, its own SoftHSM2 token),
issues --certs certificates, revokes --revoked of them (mixed reasons, one on
hold), and writes for wrk (bench/ocsp.lua) one request per line:

  health.txt      GET /health
  post.txt        POST /ocsp, one DER OCSPRequest without nonce per certificate
  nonce.txt       POST /ocsp, --nonce-bodies requests with distinct 16-byte nonces
  get.txt         GET /ocsp/<url-encoded base64 DER>, without nonce, per certificate

plus good.pem / revoked.pem (one certificate of each status), chain.pem (issuing
CA + root, for `openssl ocsp -CAfile`) and expected.json (serial -> status).

`check` sends every request of post.txt and get.txt and the first 100 of
nonce.txt to the running server and verifies each answer: HTTP 200, OCSP
successful, the asked serial, the expected status (good / revoked with the
reason), a nonce echoed when one was sent, the signature checked with the
responder certificate in the response, and that certificate issued by the CA
with the OCSP-signing EKU. Any mismatch exits non-zero, so the benchmark never
measures error replies.

`profile` (run by ocsp.sh after the server stopped, on the same instance)
calls the Flask app in-process as a WSGI callable for each path and times the
steps of OcspResponder.respond, to show where a request's CPU goes.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

REASONS = ("keyCompromise", "superseded", "cessationOfOperation", "affiliationChanged", "certificateHold")


def _line(method: str, target: str, body: bytes | None) -> str:
    return f"{method} {target} {body.hex() if body else '-'}\n"


def prepare(args: argparse.Namespace) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509 import ocsp
    from cryptography.x509.oid import NameOID

    from ca.template import IssuanceOrder
    from hsm import KeyType
    from ztpki.setup_instance import init_instance

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    instance = init_instance(Path(args.home), key_type=KeyType(args.key_type), port=args.port)
    try:
        cas = instance.cas
        issuer = cas.authority("issuing").certificate
        root = cas.authority("root").certificate
        issued = []
        for i in range(args.certs):
            key = ec.generate_private_key(ec.SECP256R1())
            name = f"ocsp-bench-{i}"
            order = IssuanceOrder(
                ca="issuing",
                profile="client",
                subject=x509.Name([
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ztpki bench"),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]),
                public_key=key.public_key(),
                device_id=name,
            )
            issued.append(cas.issue(order).certificate)
        expected: dict[str, dict[str, str]] = {}
        # Spread the revoked ones over the list: every n-th certificate.
        step = max(1, args.certs // max(1, args.revoked)) if args.revoked else 0
        revoked_indexes = set(range(0, args.certs, step)[: args.revoked]) if step else set()
        for i, certificate in enumerate(issued):
            serial = format(certificate.serial_number, "x")
            if i in revoked_indexes:
                reason = REASONS[len(expected) % len(REASONS)]
                instance.revocations.revoke(certificate.serial_number, reason)
                expected[serial] = {"status": "revoked", "reason": reason}
            else:
                expected[serial] = {"status": "good"}
        pem = serialization.Encoding.PEM
        first_good = next(c for c in issued if expected[format(c.serial_number, "x")]["status"] == "good")
        first_revoked = next(
            (c for c in issued if expected[format(c.serial_number, "x")]["status"] == "revoked"), None
        )
        (out / "good.pem").write_bytes(first_good.public_bytes(pem))
        if first_revoked is not None:
            (out / "revoked.pem").write_bytes(first_revoked.public_bytes(pem))
        (out / "issuing.pem").write_bytes(issuer.public_bytes(pem))
        (out / "chain.pem").write_bytes(issuer.public_bytes(pem) + root.public_bytes(pem))
        (out / "expected.json").write_text(json.dumps(expected, indent=1))

        def request(certificate: x509.Certificate, nonce: bytes | None) -> bytes:
            builder = ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, hashes.SHA1())
            if nonce is not None:
                builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
            return builder.build().public_bytes(serialization.Encoding.DER)

        (out / "health.txt").write_text(_line("GET", "/health", None))
        with open(out / "post.txt", "w") as post, open(out / "get.txt", "w") as get:
            for certificate in issued:
                body = request(certificate, None)
                post.write(_line("POST", "/ocsp", body))
                get.write(_line("GET", "/ocsp/" + quote(base64.b64encode(body).decode(), safe=""), None))
        with open(out / "nonce.txt", "w") as nonces:
            for i in range(args.nonce_bodies):
                nonces.write(_line("POST", "/ocsp", request(issued[i % len(issued)], os.urandom(16))))
        revoked_count = sum(1 for e in expected.values() if e["status"] == "revoked")
        print(f"instance {args.home}: {len(issued)} certificates, {revoked_count} revoked; "
              f"{len(issued)} POST and GET bodies without nonce, {args.nonce_bodies} with nonce in {out}")
    finally:
        instance.close()
    return 0


def _requests(path: Path, limit: int | None = None) -> list[tuple[str, str, bytes | None]]:
    lines = []
    for text in path.read_text().splitlines():
        method, target, body = text.split(" ")
        lines.append((method, target, None if body == "-" else bytes.fromhex(body)))
        if limit is not None and len(lines) >= limit:
            break
    return lines


def check(args: argparse.Namespace) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.x509 import ocsp
    from cryptography.x509.oid import ExtendedKeyUsageOID

    out = Path(args.out)
    expected = json.loads((out / "expected.json").read_text())
    issuer = x509.load_pem_x509_certificate((out / "issuing.pem").read_bytes())
    parts = urlsplit(args.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    failures: list[str] = []
    counts: dict[str, int] = {}

    def verify(kind: str, body: bytes | None, status: int, answer: bytes) -> None:
        if status != 200:
            raise AssertionError(f"HTTP {status}")
        response = ocsp.load_der_ocsp_response(answer)
        if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise AssertionError(f"OCSP status {response.response_status.name}")
        request = ocsp.load_der_ocsp_request(body) if body is not None else None
        assert request is not None
        if response.serial_number != request.serial_number:
            raise AssertionError("answer for another serial")
        want = expected[format(request.serial_number, "x")]
        got = response.certificate_status
        if want["status"] == "good" and got is not ocsp.OCSPCertStatus.GOOD:
            raise AssertionError(f"expected good, got {got.name}")
        if want["status"] == "revoked":
            if got is not ocsp.OCSPCertStatus.REVOKED:
                raise AssertionError(f"expected revoked, got {got.name}")
            reason = response.revocation_reason
            # RFC 5280 §5.3.1: "unspecified" is sent as no reason at all.
            if (reason.value if reason is not None else "unspecified") != want["reason"]:
                raise AssertionError(f"expected reason {want['reason']}, got {reason}")
        try:
            request_nonce = request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            request_nonce = None
        if request_nonce is not None:
            echoed = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
            if echoed != request_nonce:
                raise AssertionError("nonce not echoed")
        responder = response.certificates[0]
        responder.verify_directly_issued_by(issuer)
        ekus = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.OCSP_SIGNING not in ekus:
            raise AssertionError("responder certificate without OCSP signing EKU")
        key = responder.public_key()
        hash_algorithm = response.signature_hash_algorithm
        if hash_algorithm is None:
            raise AssertionError("response signature without a hash algorithm")
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(hash_algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(), hash_algorithm)
        else:
            raise AssertionError(f"unexpected responder key {type(key).__name__}")
        counts[f"{kind} {want['status']}"] = counts.get(f"{kind} {want['status']}", 0) + 1

    plan = [
        ("POST", _requests(out / "post.txt")),
        ("GET", _requests(out / "get.txt")),
        ("POST+nonce", _requests(out / "nonce.txt", 100)),
    ]
    for kind, requests in plan:
        for method, target, body in requests:
            headers = {"Content-Type": "application/ocsp-request"} if body is not None else {}
            connection.request(method, target, body=body, headers=headers)
            reply = connection.getresponse()
            answer = reply.read()
            if reply.will_close:
                connection.close()
            der = body if body is not None else base64.b64decode(unquote(target.removeprefix("/ocsp/")))
            try:
                verify(kind, der, reply.status, answer)
            except Exception as exc:  # report every kind of mismatch, then fail
                failures.append(f"{kind} {target[:40]}: {type(exc).__name__}: {exc}")
    connection.close()
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    if failures:
        print(f"check FAILED ({len(failures)} bad answers): " + "; ".join(failures[:5]))
        return 1
    print(f"check OK: {summary} (status, serial, reason, nonce and signature verified)")
    return 0


class _Timers:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, name: str, function: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
                self.calls[name] = self.calls.get(name, 0) + 1

        return timed

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


class _Shim:
    """A module stand-in whose attributes can be replaced one by one."""

    def __init__(self, real: Any, **overrides: Any) -> None:
        self._real = real
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


PROFILE_STEPS = (
    ("load_der_ocsp_request", "parse request (load_der_ocsp_request)"),
    ("_parse", "parse_request total, nonce included (_parse)"),
    ("_responder_for", "responder lookup (_responder_for)"),
    ("status_row", "store.status_row (SELECT)"),
    ("_cached", "cache lookup (_cached)"),
    ("builder_sign", "OCSPResponseBuilder.sign with the scratch key (in _build)"),
    ("token_signer", "token.signer() lookup (in _build)"),
    ("token_sign", "token sign, responder key (in _build)"),
    ("_build", "_build total (response + signature)"),
    ("_remember", "cache store (_remember)"),
)


def _what_if_status_row(instance: Any, out: Path, seconds: float, rounds: int) -> None:
    """store.status_row as it is, against the same SELECT built once with bind
    parameters, and against the same SQL on a kept DBAPI connection (SQLite)."""
    from sqlalchemy import bindparam, select

    from ca.schema import certificates
    from storage.db import serial_hex

    store = instance.store
    authority_id = store.authority("issuing").id
    serials = [int(s, 16) for s in json.loads((out / "expected.json").read_text())]
    prebuilt = select(
        certificates.c.status, certificates.c.revoked_at, certificates.c.revocation_reason
    ).where(certificates.c.authority_id == bindparam("a"), certificates.c.serial == bindparam("s"))

    def with_prebuilt(serial: int) -> Any:
        with store.engine.connect() as conn:
            return conn.execute(prebuilt, {"a": authority_id, "s": serial_hex(serial)}).first()

    ways: list[tuple[str, Any]] = [
        ("store.status_row as it is in this tree", lambda s: store.status_row(authority_id, s)),
        ("same SELECT built once, bind parameters, engine.connect()", with_prebuilt),
    ]
    raw = None
    if store.url.startswith("sqlite"):
        raw = store.engine.raw_connection()
        sql = ("SELECT status, revoked_at, revocation_reason FROM certificates"
               " WHERE authority_id = ? AND serial = ?")

        def with_dbapi(serial: int) -> Any:
            cursor = raw.cursor()
            try:
                cursor.execute(sql, (authority_id, serial_hex(serial)))
                return cursor.fetchone()
            finally:
                cursor.close()

        ways.append(("same SQL on a kept DBAPI connection (sqlite3)", with_dbapi))
    agree = all(
        len({(r[0], r[2]) if r is not None else None for r in (way(serial) for _, way in ways)}) == 1
        for serial in serials[:50]
    )
    best: dict[str, float] = {}
    for _round in range(rounds):
        for name, way in ways:
            count, start, deadline = 0, time.perf_counter(), time.perf_counter() + seconds / 2
            while True:
                way(serials[count % len(serials)])
                count += 1
                if time.perf_counter() >= deadline:
                    break
            best[name] = min(best.get(name, float("inf")), 1e6 * (time.perf_counter() - start) / count)
    if raw is not None:
        raw.close()
    print()
    print("## What-if (not the product's code): the status lookup of every OCSP request")
    print()
    print("| way | µs/lookup |")
    print("|---|---|")
    for name, _ in ways:
        print(f"| {name} | {best[name]:,.0f} |")
    print(f"\nSame answers (status, reason) for 50 serials: {'yes' if agree else 'NO'}")


def profile(args: argparse.Namespace) -> int:
    """In-process cost of each OCSP path and of the steps of OcspResponder.respond.

    No network and no gunicorn: the Flask app is called as a WSGI callable, so
    the difference between these figures and the server's CPU per request in
    bench/ocsp.sh is gunicorn (accept, HTTP parsing, socket writes, close)."""
    import io

    import ca.ocsp_request as ocsp_request_module
    from cryptography.x509 import ocsp as x509_ocsp

    from hsm.token import KeySigner
    from ztpki.http.app import create_app
    from ztpki.instance import Instance

    out = Path(args.out)
    instance = Instance.open(Path(args.home))
    app = create_app(instance)
    post = [b for _, _, b in _requests(out / "post.txt") if b is not None]
    nonce = [b for _, _, b in _requests(out / "nonce.txt") if b is not None]
    gets = [t for _, t, _ in _requests(out / "get.txt")]

    def call(method: str, path: str, body: bytes = b"") -> bytes:
        environ = {
            "REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
            "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.version": (1, 0),
        }
        if method == "POST":
            environ["CONTENT_TYPE"] = "application/ocsp-request"
            environ["CONTENT_LENGTH"] = str(len(body))
        def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            return None

        return b"".join(app(environ, start_response))

    def per_call(function: Any, items: list[Any], seconds: float) -> float:
        count, start, deadline = 0, time.perf_counter(), time.perf_counter() + seconds
        while True:
            function(items[count % len(items)])
            count += 1
            if time.perf_counter() >= deadline:
                break
        return 1e6 * (time.perf_counter() - start) / count

    responder = instance.ocsp
    for body in post:  # fill the cache, as the server's warm-up does
        responder.respond(body)
    budget = args.seconds
    paths: list[tuple[str, Any, list[Any]]] = [
        ("GET /health (WSGI)", lambda _: call("GET", "/health"), [None]),
        ("POST /ocsp no nonce (WSGI)", lambda b: call("POST", "/ocsp", b), post),
        ("GET /ocsp/<base64> no nonce (WSGI)", lambda t: call("GET", unquote(t)), gets),
        ("POST /ocsp nonce (WSGI)", lambda b: call("POST", "/ocsp", b), nonce),
        ("respond() no nonce", responder.respond, post),
        ("respond() nonce", responder.respond, nonce),
    ]
    results: dict[str, float] = {}
    for _round in range(args.rounds):  # interleaved rounds; the best of each is kept
        for name, function, items in paths:
            value = per_call(function, items, budget)
            results[name] = min(results.get(name, float("inf")), value)
    print(f"## In-process cost per request (best of {args.rounds} rounds of {budget:g} s; no network, no gunicorn)")
    print()
    print("| path | µs/request |")
    print("|---|---|")
    for name, _, _ in paths:
        print(f"| {name} | {results[name]:,.0f} |")

    _what_if_status_row(instance, out, budget, args.rounds)

    timers = _Timers()
    # Each call respond() makes is looked up at call time (module, instance or
    # class attribute), so wrapping them times the product's own code path.
    setattr(ocsp_request_module, "ocsp", _Shim(x509_ocsp, load_der_ocsp_request=timers.wrap(
        "load_der_ocsp_request", x509_ocsp.load_der_ocsp_request)))
    for name in ("_parse", "_responder_for", "_cached", "_build", "_remember"):
        setattr(responder, name, timers.wrap(name, getattr(responder, name)))
    store = instance.store
    for owner, name, step in (
        (store, "status_row", "status_row"),
        (store.engine.dialect, "do_execute", "db_execute"),
        (instance.cas.token, "signer", "token_signer"),
        (KeySigner, "sign", "token_sign"),
        (x509_ocsp.OCSPResponseBuilder, "sign", "builder_sign"),
    ):
        setattr(owner, name, timers.wrap(step, getattr(owner, name)))
    respond = timers.wrap("respond", responder.respond)

    profiler = None
    for label, items in (("no nonce (cached)", post), ("nonce (signed each time)", nonce)):
        per_call(respond, items, budget / 4)  # warm-up
        timers.reset()
        if args.cprofile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        per_call(respond, items, budget)
        if profiler is not None:
            profiler.disable()
        calls = timers.calls["respond"]
        total = timers.seconds["respond"]
        print()
        print(f"## OcspResponder.respond, {label}: {calls} calls, {1e6 * total / calls:,.0f} µs each (timers in place)")
        print()
        print("| step | µs/request | share |")
        print("|---|---|---|")
        for key, text in PROFILE_STEPS:
            if key in timers.seconds:
                value = timers.seconds[key]
                print(f"| {text} | {1e6 * value / calls:,.0f} | {100 * value / total:.0f} % |")
        if "db_execute" in timers.seconds and "status_row" in timers.seconds:
            db = timers.seconds["db_execute"]
            sa = timers.seconds["status_row"] - db
            print(f"| ↳ of status_row: DBAPI cursor.execute | {1e6 * db / calls:,.0f} | {100 * db / total:.0f} % |")
            print(f"| ↳ of status_row: SQLAlchemy Core (statement build, cache key, pool, result) | "
                  f"{1e6 * sa / calls:,.0f} | {100 * sa / total:.0f} % |")
        if profiler is not None:
            import pstats

            stats = pstats.Stats(profiler, stream=sys.stdout)
            stats.strip_dirs()
            stats.sort_stats("tottime").print_stats(args.cprofile)
            profiler = None
    instance.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare")
    p.add_argument("--home", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--certs", type=int, default=300)
    p.add_argument("--revoked", type=int, default=30)
    p.add_argument("--nonce-bodies", type=int, default=2000)
    p.add_argument("--key-type", default="ec-p256")
    p.set_defaults(run=prepare)
    c = commands.add_parser("check")
    c.add_argument("--url", required=True)
    c.add_argument("--out", required=True)
    c.set_defaults(run=check)
    f = commands.add_parser("profile")
    f.add_argument("--home", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--seconds", type=float, default=2.0)
    f.add_argument("--rounds", type=int, default=3)
    f.add_argument("--cprofile", type=int, default=0, metavar="N")
    f.set_defaults(run=profile)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())

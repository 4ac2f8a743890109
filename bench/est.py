#!/usr/bin/env python3
"""EST simpleenroll/s of `ztpki serve` over HTTPS with keep-alive (not part of the test run).

    .venv/bin/python bench/est.py [--seconds 10] [--clients 1,4,8] [--workers 2] [--threads 4]
        [--quick] [--auth basic,tls] [--lint configured,off] [--profile] [--profile-count M]

Makes a throwaway instance (ztpki.setup_instance.init_instance: its own
SoftHSM2 token, EC P-256 CA, SQLite), with:

- [tls]: a server certificate for IP 127.0.0.1 issued by the instance's CA
  (ztpki.demo.est.ensure_tls, as `ztpki demo` does);
- [ra] global_limit raised (the default 200 requests/s would cap the run);
- a vendor PKI (ztpki.demo.vendor.VendorPki, root → device CA → IDevIDs) whose
  root the instance trusts, so `serve` puts it in the TLS client CA bundle;
- devices of profile `ucpe` (the profile EST stands for,
  ztpki.http.est.DEFAULT_EST_PROFILE; the unlabelled path routes to the
  device's profile), imported as `ztpki devices import` does. Each device
  enrols once (the per-device rate limit stays as configured).

It serves `ztpki serve --workers W --threads T` (T > 1: gthread workers, so
HTTP/1.1 connections stay open over TLS), once per lint setting of `ucpe`
(HOME/profiles.toml as `ztpki init` wrote it, and lint = false).

Load: K client processes (bench/harness.py's run_clients: spawn, one start
signal, server CPU from /proc, other load), each with http.client over an
ssl context that trusts the instance's root. CSRs (EC P-256, subject
CN + serialNumber = the device, base64 bodies) are built before the timed
window. Auth modes:

- basic: HTTP Basic with a password credential (Credentials.create_password).
  One batch credential per client without a use limit (the device names
  itself by the CSR's serialNumber): the server checks one password hash per
  request, as it would with one password per device. One persistent
  connection per client (keep-alive): the rate this issue asks for.
- tls: the device's IDevID as TLS client certificate. A TLS client
  certificate belongs to a connection, so every enrolment opens a new
  connection (one full handshake with client-certificate verification) for
  its device and closes it: the handshake is part of the cost. The ssl
  contexts (one per device, its certificate and key loaded) are built before
  the window.

Each POST /.well-known/est/simpleenroll must return 200 with a certs-only
body (checked by content type and DER prefix); once per client the first one
is decoded in full: one certificate, issued by the issuing CA (signature
verified), for the CSR's key and the device's serialNumber.

Printed: enrolments/s per client count and auth mode; GET /health over the
TLS port with the same clients and keep-alive, and the ratio (goal ≥ 50 %);
GET /health with a new TLS connection per request (the handshake cost);
server CPU per request; client CPU; TLS handshakes (connections) per
request; the token's raw signing rate; the password hash cost; other load; errors.

--profile: with the server stopped, M enrolments in-process through
est_server_for(instance).handle(EstRequest) (no HTTP, no TLS, lint off,
Basic auth): a step breakdown (CSR parse/verify, core decide, password check
(the password hash), issue, certs-only encoding) and cProfile of the handle() calls;
then whether two password checks overlap, alone and inside a unit of work
after a rate-limit write (as core.decide runs them).

The server and the temporary directory are removed on exit, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import http.client
import math
import multiprocessing as mp
import os
import platform
import shutil
import signal
import ssl
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
for entry in (str(REPO), str(BENCH)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

# bench/harness.py: the server, the clients' timed loop, CPU accounting, printing.
from harness import (
    MAX_OTHER_LOAD,
    BadAnswer,
    BenchError,
    CallTimer,
    ClientErrors,
    Server,
    Steps,
    describe,
    free_port,
    import_devices,
    lint_modes,
    open_instance,
    profile_lint,
    revision,
    run,
    run_clients,
    say,
    say_cprofile,
    say_token_sign,
    set_profile_lint,
    store_text,
    timed_loop,
    tree_ticks,
)
from issuance import token_sign_rate

PROFILE = "ucpe"
VENDOR_DIR = "vendor"
ENROL_PATH = "/.well-known/est/simpleenroll"
KEY_POOL = 32  # EC P-256 subject keys per client process
USER_AGENT = "ztpki-bench-est/1"  # with a User-Agent, replies have 64-character lines (as for curl)
MAX_TLS_DEVICES = 6000  # IDevIDs (and pre-built ssl contexts) per pool at most
MODE_TEXT = {
    "health": "GET /health, keep-alive",
    "health-new": "GET /health, new TLS connection each",
    "basic": "simpleenroll, Basic, keep-alive",
    "tls": "simpleenroll, IDevID, new TLS connection each",
}


# --------------------------------------------------------------------------
# Client side
# --------------------------------------------------------------------------


class TlsLink:
    """One HTTPS connection, reopened whenever the server closes it (or after
    every request with keep=False). opened counts TLS handshakes."""

    def __init__(self, port: int, context: ssl.SSLContext, keep: bool = True) -> None:
        self.port, self.context, self.keep = port, context, keep
        self.conn: http.client.HTTPSConnection | None = None
        self.opened = 0
        self.requests = 0
        self.resumed = 0

    def send(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
             context: ssl.SSLContext | None = None) -> tuple[int, str, bytes]:
        for attempt in (0, 1):
            fresh = self.conn is None
            if self.conn is None:
                self.conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=60,
                                                        context=context or self.context)
                self.conn.connect()  # the handshake, counted here
                self.opened += 1
                sock = self.conn.sock
                if isinstance(sock, ssl.SSLSocket) and sock.session_reused:
                    self.resumed += 1
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 0 and not fresh:  # a kept-alive connection closed meanwhile
                    continue
                raise
            self.requests += 1
            if response.will_close or not self.keep:
                self.close()
            return response.status, response.getheader("Content-Type", ""), data
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _client_context(root_pem: str, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server's certificate and name (IP 127.0.0.1)
    context.load_verify_locations(cadata=root_pem)
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def _csr(serial: str, key: Any) -> bytes:
    """A base64 PKCS#10 body (RFC 7030 §4.2.1) naming the device."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    subject = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, serial),
                         x509.NameAttribute(NameOID.COMMON_NAME, serial)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return base64.encodebytes(csr.public_bytes(Encoding.DER))


def full_check(body: bytes, serial: str, key: Any, issuing_pem: str) -> None:
    """Once per client: the certs-only reply in full."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        pkcs7,
    )
    from cryptography.x509.oid import NameOID

    certificates = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))
    if len(certificates) != 1:
        raise BadAnswer(f"certs-only with {len(certificates)} certificates")
    certificate = certificates[0]
    certificate.verify_directly_issued_by(x509.load_pem_x509_certificate(issuing_pem.encode()))
    spki = PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(Encoding.DER, spki) != key.public_key().public_bytes(Encoding.DER, spki):
        raise BadAnswer("the certificate is not for the CSR's key")
    names = [a.value for a in certificate.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)]
    if serial not in names and serial not in str(certificate.subject):
        raise BadAnswer(f"the certificate does not name {serial}: {certificate.subject.rfc4514_string()}")


def _client(spec: dict[str, Any], built: Any, warm: Any, ready: Any, go: Any, results: Any) -> None:
    """bench/harness.py's client protocol (built, warm, ready, go, results; timed_loop) for EST."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    try:
        from cryptography.hazmat.primitives.asymmetric import ec

        cpu_start = time.process_time()
        mode = spec["mode"]
        data = spec["credentials"] or {}
        root_pem = data["root"]
        plain_context = _client_context(root_pem)
        link = TlsLink(spec["port"], plain_context, keep=mode in ("health", "basic"))
        error = ClientErrors()
        errors, samples = error.counts, error.samples
        state = {"verified": False, "next": 0}
        work: list[tuple[str, bytes, Any, ssl.SSLContext | None]] = []  # (serial, CSR body, key, context)
        headers = {"Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "base64",
                   "User-Agent": USER_AGENT}
        if mode in ("basic", "tls"):
            keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(KEY_POOL)]
            if mode == "basic":
                token = base64.b64encode(f"{data['user']}:{data['password']}".encode()).decode()
                headers["Authorization"] = f"Basic {token}"
                for i, serial in enumerate(data["serials"]):
                    work.append((serial, _csr(serial, keys[i % KEY_POOL]), keys[i % KEY_POOL], None))
            else:
                for i, (serial, cert, key) in enumerate(data["devices"]):
                    work.append((serial, _csr(serial, keys[i % KEY_POOL]), keys[i % KEY_POOL],
                                 _client_context(root_pem, cert, key)))
        build_cpu = time.process_time() - cpu_start

        def enrol() -> bool:
            position = state["next"]
            if position >= len(work):
                return False
            state["next"] = position + 1
            serial, body, key, context = work[position]
            status, content_type, answer = link.send("POST", ENROL_PATH, body, headers, context=context)
            if status != 200:
                error(f"HTTP {status}", answer[:120].decode("latin-1").strip())
                return True
            # Cheap: the certs-only type and base64 of a DER SEQUENCE with a long length ("MII").
            if not content_type.startswith("application/pkcs7-mime") or "certs-only" not in content_type \
                    or not answer.startswith(b"MII"):
                error("not certs-only", f"{content_type} {answer[:40]!r}")
                return True
            if not state["verified"]:
                try:
                    full_check(answer, serial, key, data["issuing"])
                except Exception as exc:  # noqa: BLE001
                    error("full check failed", f"{type(exc).__name__}: {exc}")
                state["verified"] = True
            return True

        def health() -> bool:
            status, _type, body = link.send("GET", "/health")
            if status != 200:
                error(f"health HTTP {status}", body[:80].decode("latin-1"))
            return True

        resumed_before = {"count": 0}

        def forget_warm_up() -> None:
            if mode in ("basic", "tls") and not state["verified"]:
                error("never verified", "no answer was checked in full during the warm-up")
            kept_errors, kept_samples = Counter(errors), list(samples)
            errors.clear()
            samples.clear()
            for kind, count in kept_errors.items():  # a failed full check stays visible
                if kind in ("full check failed", "never verified"):
                    errors[kind] = count
                    samples.extend(s for s in kept_samples if s.startswith(kind))
            resumed_before["count"] = link.resumed

        op = enrol if mode in ("basic", "tls") else health
        timing = timed_loop(op, spec, link, built, warm, ready, go, after_warmup=forget_warm_up)
        if mode in ("health", "basic"):  # kept alive: the connections were opened in the warm-up
            errors["(info) TLS handshakes incl. warm-up"] += link.opened
        if link.resumed - resumed_before["count"]:
            errors["(info) TLS sessions resumed"] += link.resumed - resumed_before["count"]
        results.put({
            "index": spec["index"], **timing, "build_cpu": build_cpu, "built": max(len(work), 1),
            "errors": dict(errors), "samples": samples, "verified": state["verified"],
        })
    except BaseException:  # noqa: BLE001  (reported to the parent, which stops the run)
        results.put({"index": spec["index"], "error": traceback.format_exc()})
        built.put(spec["index"])
        ready.put(spec["index"])


# --------------------------------------------------------------------------
# Parent side: the instance
# --------------------------------------------------------------------------



def register_basic(home: Path, workdir: Path, clients: int, per_client: int, tag: str) -> list[dict[str, Any]]:
    """Per client: per_client devices and one batch password credential
    (no use limit) that covers them."""
    instance = open_instance(home, fast_writes=True)
    try:
        pools = []
        for c in range(clients):
            serials = [f"EST-{tag}-{c:02d}-{i:06d}" for i in range(per_client)]
            import_devices(instance, workdir, serials, "acme", "ucpe-bench", PROFILE)
            user, password = instance.credentials.create_password(batch=f"bench-{tag}-{c:02d}")
            pools.append({"user": user, "password": password, "serials": serials})
        return pools
    finally:
        instance.close()


def register_tls(home: Path, workdir: Path, clients: int, per_client: int, tag: str) -> list[dict[str, Any]]:
    """Per client: per_client devices of the trusted vendor, each with its IDevID
    (files: certificate + device CA + root, key)."""
    from ztpki.demo.vendor import VENDOR, VendorPki

    vendor = VendorPki(workdir / VENDOR_DIR, "Bench Devices")
    instance = open_instance(home, fast_writes=True)
    try:
        pools = []
        for c in range(clients):
            serials = [f"EST-{tag}-{c:02d}-{i:06d}" for i in range(per_client)]
            import_devices(instance, workdir, serials, VENDOR, "ucpe-bench", PROFILE)
            devices = []
            for serial in serials:
                files = vendor.idevid(serial)
                devices.append((serial, files["cert"], files["key"]))
            pools.append({"devices": devices})
        return pools
    finally:
        instance.close()


def prepare(home: Path, workdir: Path) -> dict[str, Any]:
    """[tls], the trusted vendor root, [ra] global_limit; the PEMs clients need."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from ztpki.config import load_settings, write_settings
    from ztpki.demo.est import ensure_tls
    from ztpki.demo.vendor import VendorPki, trust_vendor

    instance = open_instance(home)
    try:
        tls = ensure_tls(instance, home, free_port())
        trust_vendor(instance, VendorPki(workdir / VENDOR_DIR, "Bench Devices").root)
        chain = instance.cas.authority().chain
    finally:
        instance.close()
    configured = load_settings(home)
    write_settings(dataclasses.replace(configured, ra=dataclasses.replace(configured.ra, global_limit=1_000_000)))
    return {"tls_port": tls.port, "root": chain[-1].public_bytes(Encoding.PEM).decode(),
            "issuing": chain[0].public_bytes(Encoding.PEM).decode()}


class TlsServer(Server):
    """`ztpki serve --workers W --threads T`: plain HTTP on .plain_port, HTTPS on .port."""

    def __init__(self, home: Path, workers: int, threads: int, tls_port: int, root_pem: str, log: Path) -> None:
        super().__init__(home, workers, log)
        self.threads = threads
        self.plain_port, self.port = self.port, tls_port
        self.root_pem = root_pem

    def command(self) -> list[str]:
        plain = super().command()
        plain[plain.index("--port") + 1] = str(self.plain_port)
        return [*plain, "--threads", str(self.threads), "--tls-port", str(self.port)]

    def probe(self) -> http.client.HTTPConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=2, context=_client_context(self.root_pem))

    def processes_when_up(self) -> int:
        return 2 + 2 * self.workers  # supervisor → 2 arbiters → W workers each

    def ticks(self) -> dict[int, int]:
        """With [tls] the workers are grandchildren (supervisor → arbiter → worker)."""
        assert self.process is not None
        return tree_ticks(self.process.pid, deep=True)


# --------------------------------------------------------------------------
# In-process: calibration and --profile
# --------------------------------------------------------------------------


def in_process(home: Path, mode: str, pool: dict[str, Any], steps: Any = None, cprofile: bool = False) -> dict[str, Any]:
    """Enrolments through est_server_for(instance).handle in this process: no
    HTTP, no TLS. Only the handle() calls are timed (and profiled)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    from protocols.est.server import EstRequest
    from ztpki.http.est import est_server_for

    instance = open_instance(home)
    try:
        server = est_server_for(instance)
        keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(8)]
        requests = []
        if mode == "basic":
            token = base64.b64encode(f"{pool['user']}:{pool['password']}".encode()).decode()
            for i, serial in enumerate(pool["serials"]):
                requests.append(EstRequest(operation="simpleenroll", method="POST", body=_csr(serial, keys[i % 8]),
                                           content_transfer_encoding="base64", authorization=f"Basic {token}",
                                           over_tls=True, peer="127.0.0.1", user_agent=USER_AGENT))
        else:
            for i, (serial, cert, _key) in enumerate(pool["devices"]):
                chain = tuple(x509.load_pem_x509_certificates(Path(cert).read_bytes())[:-1])  # without the anchor
                requests.append(EstRequest(operation="simpleenroll", method="POST", body=_csr(serial, keys[i % 8]),
                                           content_transfer_encoding="base64", client_chain=chain,
                                           over_tls=True, peer="127.0.0.1", user_agent=USER_AGENT))
        if steps is not None:
            _instrument(instance, steps)
        timed = CallTimer(steps, cprofile)
        each: list[float] = []
        each_cpu: list[float] = []
        for request in requests:
            reply, wall, cpu = timed(server.handle, request)
            if reply.status != 200:
                raise BenchError(f"in-process simpleenroll ({mode}): HTTP {reply.status} {reply.body[:200]!r}")
            each.append(wall)
            each_cpu.append(cpu)
        out: dict[str, Any] = {"count": len(requests), "each": each, "each_cpu": each_cpu, **timed.cprofile_texts()}
        if steps is not None:
            out["steps"], out["calls"] = dict(steps.seconds), dict(steps.calls)
        return out
    finally:
        instance.close()


# (step key, label, parent step or None)
STEPS = (
    ("parse_csr", "codec.decode_body + codec.parse_csr (base64, CSR parse, self-signature verify)", None),
    ("txid", "transaction_id (hash of operation, CSR, identity)", None),
    ("decide", "core decide, in the request's unit of work", None),
    ("authenticate", "↳ authenticate", "decide"),
    ("check_password", "  ↳ Credentials.check_password (SELECT, hash, UPDATE uses)", "authenticate"),
    ("scrypt", "    ↳ verify_secret (password hash)", "check_password"),
    ("limiter", "↳ rate limit counters", "decide"),
    ("registry", "↳ registry.get (device)", "decide"),
    ("issue", "↳ cas.issue (template, lint if on, store, token sign, verify)", "decide"),
    ("audit", "↳ audit.append", "decide"),
    ("certs_only", "codec.certs_only + codec.b64_lines (the reply)", None),
    ("unit_commit", "commit of the request's unit of work (after decide)", None),
)


def _instrument(instance: Any, steps: Any) -> None:
    """Wrap what the product's path looks up at call time (module and instance attributes)."""
    from protocols.est import codec
    from protocols.est import server as est_server
    from vendor_trust import credentials as credentials_module

    parse, decode = codec.parse_csr, codec.decode_body
    codec.parse_csr = steps.wrap("parse_csr", parse)
    codec.decode_body = steps.wrap("parse_csr", decode)  # nested in no call of the other: adds up
    est_server.transaction_id = steps.wrap("txid", est_server.transaction_id)
    codec.certs_only = steps.wrap("certs_only", codec.certs_only)
    codec.b64_lines = steps.wrap("certs_only", codec.b64_lines)
    credentials_module.verify_secret = steps.wrap("scrypt", credentials_module.verify_secret)
    core = instance.core
    core.decide = steps.wrap("decide", core.decide)
    for owner, name, step in ((core.limiter, "hit", "limiter"), (core.authenticator, "authenticate", "authenticate"),
                              (core.registry, "get", "registry"), (core.audit, "append", "audit"),
                              (instance.cas, "issue", "issue"), (instance.credentials, "check_password", "check_password")):
        setattr(owner, name, steps.wrap(step, getattr(owner, name)))
    # The unit of work's commit (storage.db.unit_of_work, looked up by ztpki/http/est.py at call time).
    from storage import db

    db.unit_of_work = steps.timed_unit(db.unit_of_work)


def lock_check(home: Path, workdir: Path, count: int = 10) -> dict[str, float]:
    """Wall seconds for 2 threads x count password checks, alone and inside a
    unit of work after a rate-limit write that is not committed first (as
    core.decide ran them before it committed its global count): a slow hash
    releases the GIL, so only SQLite's write lock keeps the two apart."""
    import threading

    from storage import db

    pools = register_basic(home, workdir, 2, 1, "lock")
    instance = open_instance(home)
    try:
        credentials = instance.credentials

        def alone(pool: dict[str, Any]) -> None:
            for _ in range(count):
                credentials.check_password(pool["user"], pool["password"])

        def in_unit(pool: dict[str, Any]) -> None:
            for _ in range(count):
                with db.unit_of_work(instance.engine):
                    instance.limiter.hit([("bench-lock-check", 10**9, 1)])
                    credentials.check_password(pool["user"], pool["password"])

        out = {}
        for name, function in (("one thread, alone", alone), ("alone", alone), ("in a unit after a write", in_unit)):
            threads = [threading.Thread(target=function, args=(p,)) for p in (pools if name != "one thread, alone" else pools[:1])]
            t0 = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            out[name] = time.perf_counter() - t0
        return out
    finally:
        instance.close()


def scrypt_cost() -> tuple[str, float]:
    """The hash create_password stores and one verify's CPU time (median of 5).

    Generated EST passwords (144 random bits) are stored as a salted SHA-256
    since 2026-11-23; before, as scrypt ln=14 (~35 ms per verify, 80-86 % of
    a Basic enrolment's server CPU: see the README's first EST figures)."""
    from vendor_trust.hashing import hash_random_secret, verify_secret

    encoded = hash_random_secret(b"user\0password")
    times = []
    for _ in range(5):
        c0 = time.perf_counter()
        verify_secret(b"user\0password", encoded)
        times.append(time.perf_counter() - c0)
    return "salted SHA-256 (generated 144-bit passwords)", statistics.median(times)


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------



def measure(ctx: Any, server: TlsServer, mode: str, clients: int, seconds: float, warmup: float, retries: int,
            root: str, pools: Any = None, renew: Any = None) -> dict[str, Any]:
    """bench/harness.py's run_clients with this module's client; the least disturbed of 1 + retries runs."""
    best = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(5)
            if renew is not None:  # fresh devices: each one enrols once
                pools = renew()
        specs = [dict(p, root=root) for p in pools] if pools else [{"root": root}] * clients
        again = run_clients(ctx, _client, server, mode, clients, seconds, warmup, specs)
        unit = "enrol/s" if mode in ("basic", "tls") else "req/s  "
        say(f"{MODE_TEXT[mode]:<46} {clients} client(s): " + describe(again, unit, links="TLS handshakes in the window"))
        for sample in again["samples"]:
            say(f"    e.g. {sample}")
        if best is None or again["other_cores"] < best["other_cores"]:
            best = again
        if again["other_cores"] <= MAX_OTHER_LOAD:
            break
    assert best is not None
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per measurement (10; --quick 3)")
    parser.add_argument("--clients", default=None, help="client process counts (1,4,8; --quick 2)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per listener (2)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker, > 1 for gthread and keep-alive (4)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds before each measurement (2; --quick 0.5)")
    parser.add_argument("--quick", action="store_true",
                        help="3 s per measurement, 2 clients, lint as configured only: about a minute")
    parser.add_argument("--auth", default="basic,tls", help="basic (HTTP Basic, keep-alive), tls (IDevID, a connection each)")
    parser.add_argument("--lint", default=None, help="ucpe lint settings to serve: configured, off, on (configured,off; --quick configured)")
    parser.add_argument("--profile", action="store_true", help="also: in-process step breakdown and cProfile (no server)")
    parser.add_argument("--profile-count", type=int, default=None, help="enrolments for --profile (200; --quick 60)")
    parser.add_argument("--retries", type=int, default=None,
                        help=f"re-run a measurement disturbed by other load (> {MAX_OTHER_LOAD} cores) up to this many times (1; --quick 0)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))  # the finally block cleans up
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background (SIG_IGN inherited)

    seconds = args.seconds if args.seconds is not None else (3.0 if args.quick else 10.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0)
    client_counts = [int(c) for c in (args.clients or ("2" if args.quick else "1,4,8")).split(",")]
    lint_names = (args.lint or ("configured" if args.quick else "configured,off")).split(",")
    auth_modes = [a for a in args.auth.split(",") if a]
    if any(a not in ("basic", "tls") for a in auth_modes):
        parser.error("--auth: basic, tls")
    profile_count = args.profile_count or (60 if args.quick else 200)
    retries = args.retries if args.retries is not None else (0 if args.quick else 1)
    if args.threads < 2:
        say("# ⚠ --threads 1: sync workers, which close every connection (no keep-alive)")
    ctx = mp.get_context("spawn")

    from ztpki.config import RaSettings
    from ztpki.setup_instance import init_instance

    say(f"# ztpki EST benchmark: {os.cpu_count()} CPUs, Python {platform.python_version()}, {ssl.OPENSSL_VERSION}, "
         f"commit {revision()}, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    say(f"# `ztpki serve --workers {args.workers} --threads {args.threads}` ({'gthread' if args.threads > 1 else 'sync'}), "
         f"{seconds:g} s per measurement after {warmup:g} s warm-up, clients {','.join(map(str, client_counts))} "
         f"(spawn), load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")

    tmp = Path(tempfile.mkdtemp(prefix="ztpki-est-bench-"))
    server: TlsServer | None = None
    summary: list[dict[str, Any]] = []
    try:
        home = tmp / "home"
        init_instance(home).close()
        facts = prepare(home, tmp)
        instance = open_instance(home)
        settings = instance.settings
        instance.close()
        configured_lint = profile_lint(home, PROFILE)
        ra = settings.ra
        cost_text, scrypt_s = scrypt_cost()
        say(f"# instance: EC P-256 CA in its own SoftHSM2 token, {store_text(settings)}"
            f"; [tls] with a P-256 server certificate issued by the instance (IP 127.0.0.1), port {facts['tls_port']}")
        say(f"# profile {PROFILE!r} (unlabelled EST path, device profile): lint = {str(configured_lint).lower()} "
             "in HOME/profiles.toml as `ztpki init` wrote it")
        say(f"# rate limits ([ra]): global raised to {ra.global_limit} requests/{ra.global_window_seconds} s "
             f"(default {RaSettings().global_limit}), {ra.per_device_limit} per device/{ra.per_device_window_seconds} s "
             "(unchanged; every device enrols once)")
        say(f"# Basic: one batch password credential per client, no use limit; {cost_text}: "
             f"{1e3 * scrypt_s:.3f} ms per verify in this process")
        say("# TLS client auth: IDevIDs (P-256) under a vendor root the instance trusts; one new connection per enrolment")

        sign = token_sign_rate(ctx, home, 1.0 if args.quick else min(seconds, 3.0))
        say_token_sign(sign)

        register = {"basic": register_basic, "tls": register_tls}
        health: dict[tuple[str, int], dict[str, Any]] = {}
        series = 0
        for lint, label in lint_modes(lint_names, configured_lint):
            set_profile_lint(home, PROFILE, lint)
            pools: dict[tuple[str, int], Any] = {}
            sizes: dict[tuple[str, int], int] = {}
            t0 = time.perf_counter()
            for auth in auth_modes:
                # Size the pools from the in-process CPU per enrolment (an upper bound of the rate).
                series += 1
                probe = in_process(home, auth, register[auth](home, tmp, 1, 8, f"c{series}")[0])
                cpu = statistics.median(probe["each_cpu"][2:])
                extra = 0.002 if auth == "tls" else 0.0003  # handshake + HTTP, a guess from below
                ceiling = min(args.workers / (cpu + extra), float(ra.global_limit))
                say(f"\n## {label}, {auth}: in-process handle(simpleenroll) {1e3 * statistics.median(probe['each'][2:]):.1f} ms wall, "
                     f"{1e3 * cpu:.1f} ms CPU (median of {probe['count'] - 2}; no HTTP, no TLS) -> pools for up to "
                     f"{1.5 * ceiling:,.0f}/s")
                for clients in client_counts:
                    per_client = math.ceil(1.5 * ceiling * (seconds + warmup) / clients) + 10
                    if auth == "tls":
                        per_client = min(per_client, MAX_TLS_DEVICES // clients)
                    series += 1
                    sizes[(auth, clients)] = per_client
                    pools[(auth, clients)] = register[auth](home, tmp, clients, per_client, f"s{series}")
            say(f"# registered {sum(len(p) * sizes[k] for k, p in pools.items()):,} devices in {time.perf_counter() - t0:.1f} s")
            server = TlsServer(home, args.workers, args.threads, facts["tls_port"], facts["root"], tmp / "server.log")
            server.start()
            say(f"# server pid {server.process.pid if server.process else '?'}, processes {len(server.children())}, "
                 f"https://127.0.0.1:{server.port} (plain http on {server.plain_port})")
            for clients in client_counts:
                for mode in ("health", "health-new"):
                    if (mode, clients) not in health:
                        health[(mode, clients)] = measure(ctx, server, mode, clients, seconds, warmup, retries, facts["root"])
                for auth in auth_modes:

                    def renew(auth: str = auth, clients: int = clients, per_client: int = sizes[(auth, clients)]) -> Any:
                        nonlocal series
                        series += 1
                        return register[auth](home, tmp, clients, per_client, f"s{series}")

                    pool = [dict(p, issuing=facts["issuing"]) for p in pools[(auth, clients)]]
                    result = measure(ctx, server, auth, clients, seconds, warmup, retries, facts["root"], pool,
                                     lambda renew=renew: [dict(p, issuing=facts["issuing"]) for p in renew()])
                    result.update(label=label, auth=auth, health=health[("health", clients)],
                                  health_new=health[("health-new", clients)])
                    summary.append(result)
            server.stop()
            server = None

        _print_summary(summary, sign, args, seconds, scrypt_s, cost_text)

        if args.profile:
            set_profile_lint(home, PROFILE, False)
            pool = register_basic(home, tmp, 1, profile_count + 20, "p")[0]
            warm = dict(pool, serials=pool["serials"][:20])
            in_process(home, "basic", warm)
            rest = pool["serials"][20:]
            half = len(rest) // 2
            # cProfile first: the step timers patch module and instance attributes for good.
            profiled = in_process(home, "basic", dict(pool, serials=rest[half:]), cprofile=True)
            steps = in_process(home, "basic", dict(pool, serials=rest[:half]), steps=Steps())
            _print_profile(steps, profiled)
            locked = lock_check(home, tmp)
            say("")
            say("## Do two password checks overlap? (in-process, 10 check_password per thread, wall seconds)")
            say("")
            say(f"1 thread × 10: {locked['one thread, alone']:.2f} s; 2 threads, alone: {locked['alone']:.2f} s; "
                 f"2 threads, each inside db.unit_of_work after a rate-limit counter write (as core.decide): "
                 f"{locked['in a unit after a write']:.2f} s: "
                 + ("as long as 20 checks one after another: serialised on the store's write lock."
                    if locked["in a unit after a write"] > 1.6 * locked["one thread, alone"] else "they overlap."))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _print_summary(summary: list[dict[str, Any]], sign: dict[str, Any], args: Any, seconds: float,
                   scrypt_s: float, cost_text: str) -> None:
    say("")
    say(f"## EST simpleenroll over HTTPS (`ztpki serve --workers {args.workers} --threads {args.threads}`, "
         f"{seconds:g} s per measurement; rates wall-clock, summed over the clients)")
    say("")
    say("| lint (ucpe) | auth | clients | enrolments/s | GET /health keep-alive req/s | ratio | "
         "GET /health new connection each req/s | ratio | "
         "server µs CPU/enrolment | server cores | client µs CPU/enrolment | TLS handshakes/request | errors | other load |")
    say("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in summary:
        h = r["health"]
        errors = {k: v for k, v in r["errors"].items() if not k.startswith("(info)")}
        total = sum(errors.values())
        error_text = str(total) if not total else f"{total}: " + ", ".join(f"{k} {v}" for k, v in errors.items())
        other = max(r["other_cores"], h["other_cores"])
        auth = "Basic (keep-alive)" if r["auth"] == "basic" else "IDevID (new conn.)"
        say(f"| {r['label']} | {auth} | {r['clients']} | {r['rate']:,.1f} | {h['rate']:,.0f} | "
             f"{100 * r['rate'] / h['rate']:.1f} % | {r['health_new']['rate']:,.0f} | {100 * r['rate'] / r['health_new']['rate']:.1f} % | "
             f"{r['server_us']:,.0f} | {r['server_cores']:.2f} | {r['client_us']:,.0f} | "
             f"{r['opened'] / max(r['requests'], 1):.3f} | {error_text} | {other:.2f}{' ⚠' if other > MAX_OTHER_LOAD else ''} |")
    say("")
    seen = []
    for r in summary:
        if r["clients"] in seen:
            continue
        seen.append(r["clients"])
        h, n = r["health"], r["health_new"]
        say(f"GET /health, {r['clients']} client(s): keep-alive {h['rate']:,.0f} req/s, server {h['server_us']:,.0f} µs CPU/req, "
             f"clients {h['client_us']:,.0f} µs, {h['opened']:,} TLS handshakes for {h['requests']:,} requests in the window "
             f"({h['errors'].get('(info) TLS handshakes incl. warm-up', 0)} incl. warm-up); "
             f"new TLS connection each: {n['rate']:,.0f} req/s, server {n['server_us']:,.0f} µs CPU/req, "
             f"clients {n['client_us']:,.0f} µs, {n['opened']:,} handshakes for {n['requests']:,} requests "
             f"(a server-side handshake ≈ {n['server_us'] - h['server_us']:,.0f} µs CPU)")
    basic = [r for r in summary if r["auth"] == "basic"]
    if basic:
        share = ", ".join(f"{100 * scrypt_s * 1e6 / r['server_us']:.0f} % ({r['label']}, {r['clients']} cl.)" for r in basic)
        say(f"Password check: {cost_text}, {1e3 * scrypt_s:.3f} ms per verify (one per Basic enrolment): "
             f"of the server CPU per Basic enrolment {share}.")
    if summary:
        r = summary[0]
        say(f"Client side: {r['build_us']:,.0f} µs CPU to pre-build one request (CSR; for IDevID also its ssl context), outside the window.")
    say(f"Token: {sign['rate']:,.0f} EC P-256 signatures/s in one process ({1e6 / sign['rate']:,.0f} µs each); "
         "an enrolment makes one token signature (the certificate).")


def _print_profile(steps: dict[str, Any], profiled: dict[str, Any]) -> None:
    count = steps["count"]
    total = sum(steps["each"])
    say("")
    say(f"## In-process, lint off, Basic auth: {count} simpleenroll through est_server_for(instance).handle "
         f"({1e6 * total / count:,.0f} µs wall, {1e6 * sum(steps['each_cpu']) / count:,.0f} µs CPU per enrolment "
         "with the timers in place; no HTTP, no TLS, no client work)")
    say("")
    say("| step | µs/enrolment | share |")
    say("|---|---|---|")
    for key, label, _parent in STEPS:
        value = steps["steps"].get(key)
        if value is not None:
            say(f"| {label} | {1e6 * value / count:,.0f} | {100 * value / total:.0f} % |")
    top = sum(steps["steps"].get(k, 0.0) for k, _, parent in STEPS if parent is None)
    say(f"| rest (dispatch, evidence, EstRequest → EnrolmentRequest, reply) | {1e6 * (total - top) / count:,.0f} | "
         f"{100 * (total - top) / total:.0f} % |")
    say(f"| **total handle(simpleenroll)** | **{1e6 * total / count:,.0f}** | 100 % |")
    pc = profiled["count"]
    say_cprofile(f"## cProfile of handle() only, lint off, Basic auth, {pc} enrolments "
                 f"({1e6 * sum(profiled['each']) / pc:,.0f} µs per enrolment under the profiler)", profiled)


if __name__ == "__main__":
    run(main)

#!/usr/bin/env python3
"""CMP enrolments/s of `ztpki serve`: ir + certConf over HTTP (not part of the test run).

    .venv/bin/python bench/cmp.py [--seconds 10] [--clients 1,4,8] [--workers 2] [--quick]
        [--database URL] [--profile] [--profile-count M] [--warmup S] [--lint configured,off]

Makes a throwaway instance (ztpki.setup_instance.init_instance: its own SoftHSM2
token, EC P-256 CA, SQLite unless --database), registers devices of profile
`enb` (vendor_trust.device_import, as `ztpki devices import` does) and one MAC
credential per device (Credentials.create_mac, unlimited uses), and runs
`ztpki serve --workers W` on a free port of 127.0.0.1, twice: with
HOME/profiles.toml as `ztpki init` wrote it (the enb profile says whether
pkilint runs) and with lint = false for enb, to see the enrolment path without
pkilint.

Load: K client processes (multiprocessing, spawn). Each one pre-builds its ir
messages before the timed window (protocols/cmp/client.py: PasswordBasedMac,
500 iterations, fresh transactionID, senderNonce and messageTime per message,
subject keys from a pool of EC P-256 keys), then, on one signal with the
others, does full enrolments in a loop for --seconds: POST ir, read the ip,
POST certConf with the certificate's SHA-256 hash (client.cert_conf: a new
MAC salt, so one key derivation per certConf on the client), read the
pkiConf. HTTP/1.1 through http.client; a connection is kept as long as the
server keeps it (gunicorn's sync workers close it after every response; the
script counts the connections it opened). Answers are checked by DER slicing
(protocols/cmp/der.py): HTTP 200, ip body, status accepted, the certificate,
the ip's senderNonce (echoed as recipNonce), a pkiconf body. Once per client
the first ip and pkiConf are also decoded in full with protocols/cmp/codec.py,
their MAC protection verified and the sliced certificate compared.

Printed for each client count: enrolments/s (wall-clock, summed over the
clients); GET /health requests/s of the same server with the same clients,
and the enrolment rate as a share of half of it (an enrolment is two
requests); CPU per enrolment of the server (gunicorn master + workers, from
/proc) and of the clients; errors, non-200 answers and refusals; the cores
other processes kept busy (bench/harness.py). Before serving, the
token's raw EC P-256 signing rate in one process (bench/issuance.py's "raw
token sign": KeySigner.sign of a real TBSCertificate).

--profile: with the server stopped, M enrolments through
ztpki.http.cmp.cmp_server_for(instance).handle(bytes) in-process (lint off): a
per-step breakdown (decode, protection verify, core decide, issue, reply
protection, certConf, store), then cProfile of the handle() calls only, top
functions by cumulative and by own time.

The server and the temporary directory are removed on exit, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import math
import multiprocessing as mp
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
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
)
from issuance import token_sign_rate

PROFILE = "enb"
CMP_PATH = "/.well-known/cmp"
CONTENT_TYPE = "application/pkixcmp"
KEY_POOL = 32  # EC P-256 subject keys per client process

# PKIBody tags (RFC 4210 §5.1.2): [1] ip, [19] pkiconf, [23] error.
TAG_IP, TAG_PKICONF, TAG_ERROR = 0xA1, 0xB3, 0xB7


# --------------------------------------------------------------------------
# Client side: DER slicing of the replies (protocols/cmp/der.py)
# --------------------------------------------------------------------------



def _top(data: bytes) -> list[Any]:
    from protocols.cmp import der

    return der.children(data, der.read_tlv(data, 0))  # header, body, protection?, extraCerts?


def sender_nonce(data: bytes, header: Any) -> bytes | None:
    """senderNonce [5] EXPLICIT OCTET STRING of a PKIHeader."""
    from protocols.cmp import der

    for item in der.children(data, header):
        if item.tag == 0xA5:
            return der.read_tlv(data, item.content, item.end).value(data)
    return None


def ip_certificate(data: bytes) -> tuple[bytes, bytes]:
    """(certificate DER, the ip's senderNonce) of an accepted ip, by slicing:
    body [1] CertRepMessage { caPubs [1]?, response SEQUENCE OF CertResponse
    { certReqId, status PKIStatusInfo, certifiedKeyPair { certOrEncCert
    certificate [0] } } }."""
    from protocols.cmp import der

    parts = _top(data)
    header, body = parts[0], parts[1]
    if body.tag != TAG_IP:
        raise BadAnswer(f"ir answered with body tag 0x{body.tag:02x}" + (" (error)" if body.tag == TAG_ERROR else ""))
    rep = der.read_tlv(data, body.content, body.end)
    responses = [c for c in der.children(data, rep) if c.tag == der.TAG_SEQUENCE][-1]
    first = der.children(data, responses)[0]
    fields = der.children(data, first)
    status = der.children(data, fields[1])[0].value(data)
    status_value = int.from_bytes(status, "big")
    if status_value not in (0, 1) or len(fields) < 3 or fields[2].tag != der.TAG_SEQUENCE:
        raise BadAnswer(f"ip status {status_value} (not accepted)")
    cert_or_enc = der.children(data, fields[2])[0]
    if cert_or_enc.tag != 0xA0:
        raise BadAnswer("ip without a plain certificate")
    certificate = der.read_tlv(data, cert_or_enc.content, cert_or_enc.end).slice(data)
    nonce = sender_nonce(data, header)
    if not nonce:
        raise BadAnswer("ip without senderNonce")
    return certificate, nonce


def is_pkiconf(data: bytes) -> bool:
    return _top(data)[1].tag == TAG_PKICONF


def refusal_text(data: bytes) -> str:
    """The status text of a refusal (the rare path: decoded in full)."""
    try:
        from protocols.cmp import client, codec

        info = client.refusal(codec.decode_message(data))
        return f"{info.status.name} {sorted(f.name for f in info.fail_info)} {' '.join(info.texts)}"[:160]
    except Exception as exc:  # noqa: BLE001
        return f"undecodable answer ({type(exc).__name__})"


def full_check(ip: bytes, pkiconf: bytes, secret: bytes, sliced_cert: bytes, sliced_nonce: bytes) -> None:
    """Once per client: the same answers through the full decoder, MACs verified."""
    from cryptography import x509

    from protocols.cmp import client, codec
    from protocols.cmp.protection import verify_mac_protection

    reply = codec.decode_message(ip)
    verify_mac_protection(reply, secret)
    if client.issued_certificate(reply) != sliced_cert or reply.header.sender_nonce != sliced_nonce:
        raise BadAnswer("DER slicing disagrees with the full decoder")
    x509.load_der_x509_certificate(sliced_cert)
    confirm = codec.decode_message(pkiconf)
    verify_mac_protection(confirm, secret)
    if confirm.body_type != "pkiconf":
        raise BadAnswer(f"certConf answered with {confirm.body_type}")


class Connection:
    """One HTTP/1.1 connection, reopened whenever the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn: http.client.HTTPConnection | None = None
        self.opened = 0
        self.requests = 0

    def send(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": CONTENT_TYPE} if body is not None else {}
        for attempt in (0, 1):
            fresh = self.conn is None
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                self.opened += 1
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                self.close()
                # A kept-alive connection the server closed meanwhile: once more on a new one.
                if attempt == 0 and not fresh:
                    continue
                raise
            self.requests += 1
            if response.will_close:
                self.close()
            return response.status, data
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _client(spec: dict[str, Any], built: Any, warm: Any, ready: Any, go: Any, results: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    try:
        from cryptography.hazmat.primitives.asymmetric import ec

        from protocols.cmp import client

        cpu_start = time.process_time()
        link = Connection(spec["host"], spec["port"])
        error = ClientErrors()
        state = {"verified": False, "next": 0}
        messages: list[tuple[bytes, bytes, Any]] = []
        if spec["mode"] == "cmp":
            keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(KEY_POOL)]
            for i, (reference, secret) in enumerate(spec["credentials"]):
                credential = client.MacCredential(reference, secret.encode())
                subject = _subject(reference)
                tid, request = client.cert_request(credential, keys[i % KEY_POOL], subject=subject)
                messages.append((tid, request, credential))
        build_cpu = time.process_time() - cpu_start

        def enrol() -> bool:
            position = state["next"]
            if position >= len(messages):
                return False
            state["next"] = position + 1
            tid, request, credential = messages[position]
            status, ip = link.send("POST", CMP_PATH, request)
            if status != 200:
                error(f"ir HTTP {status}", ip[:80].decode("latin-1"))
                return True
            try:
                certificate, nonce = ip_certificate(ip)
            except Exception as exc:  # noqa: BLE001
                error("ir refused", f"{exc}; {refusal_text(ip)}")
                return True
            confirm = client.cert_conf(credential, tid, certificate, recip_nonce=nonce)
            status, answer = link.send("POST", CMP_PATH, confirm)
            if status != 200:
                error(f"certConf HTTP {status}", answer[:80].decode("latin-1"))
                return True
            try:
                ok = is_pkiconf(answer)
            except Exception:  # noqa: BLE001
                ok = False
            if not ok:
                error("certConf refused", refusal_text(answer))
                return True
            if not state["verified"]:
                full_check(ip, answer, credential.secret, certificate, nonce)
                state["verified"] = True
            return True

        def health() -> bool:
            status, body = link.send("GET", "/health")
            if status != 200:
                error(f"health HTTP {status}", body[:80].decode("latin-1"))
            return True

        def forget_warm_up() -> None:
            error.counts.clear()
            error.samples.clear()

        op = enrol if spec["mode"] == "cmp" else health
        timing = timed_loop(op, spec, link, built, warm, ready, go, after_warmup=forget_warm_up)
        results.put({
            "index": spec["index"], **timing, "build_cpu": build_cpu, "built": len(messages),
            "errors": dict(error.counts), "samples": error.samples, "verified": state["verified"],
        })
    except BaseException:  # noqa: BLE001  (reported to the parent, which stops the run)
        results.put({"index": spec["index"], "error": traceback.format_exc()})
        built.put(spec["index"])
        ready.put(spec["index"])


def _subject(reference: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"enb-{reference}.bench.example.net")])


# --------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------


def register(home: Path, workdir: Path, count: int, tag: str) -> list[tuple[str, str]]:
    """count devices of profile enb (device import, as `ztpki devices import`)
    and one MAC credential each: [(reference, secret)]."""
    serials = [f"BENCH-{tag}-{i:06d}" for i in range(count)]
    instance = open_instance(home, fast_writes=True)
    try:
        import_devices(instance, workdir, serials, "acme", "enb-bench", PROFILE)
        return [instance.credentials.create_mac(device_serial=serial) for serial in serials]
    finally:
        instance.close()


def in_process_enrolments(home: Path, credentials: list[tuple[str, str]],
                          profile_steps: bool = False, cprofile: bool = False) -> dict[str, Any]:
    """Enrolments through cmp_server_for(instance).handle in this process.
    Only the handle() calls are timed (and profiled); the client's work is not."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from protocols.cmp import client
    from ztpki.http.cmp import cmp_server_for

    instance = open_instance(home)
    try:
        server = cmp_server_for(instance)
        keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(8)]
        built = []
        for i, (reference, secret) in enumerate(credentials):
            credential = client.MacCredential(reference, secret.encode())
            tid, request = client.cert_request(credential, keys[i % len(keys)], subject=_subject(reference))
            built.append((tid, request, credential))
        steps = Steps()
        if profile_steps:
            _instrument(server, instance, steps)
        timed = CallTimer(steps, cprofile)
        handle_s = {"ir": 0.0, "certConf": 0.0}
        cpu_s = 0.0
        each: list[float] = []
        each_cpu: list[float] = []
        for tid, request, credential in built:
            (status, ip, _), wall, cpu = timed(server.handle, request)
            handle_s["ir"] += wall
            cpu_s += cpu
            if status != 200:
                raise BenchError(f"in-process ir: HTTP {status}")
            try:
                certificate, nonce = ip_certificate(ip)
            except BadAnswer as exc:
                raise BenchError(f"in-process ir refused: {exc}; {refusal_text(ip)}") from None
            confirm = client.cert_conf(credential, tid, certificate, recip_nonce=nonce)
            (status, answer, _), wall, cpu = timed(server.handle, confirm)
            handle_s["certConf"] += wall
            cpu_s += cpu
            if status != 200 or not is_pkiconf(answer):
                raise BenchError(f"in-process certConf refused: {refusal_text(answer)}")
            each.append(handle_s["ir"] + handle_s["certConf"] - sum(each))
            each_cpu.append(cpu_s - sum(each_cpu))
        out: dict[str, Any] = {"count": len(built), "handle_s": handle_s, "cpu_s": cpu_s, "each": each, "each_cpu": each_cpu,
                               "steps": dict(steps.seconds), "calls": dict(steps.calls), **timed.cprofile_texts()}
        return out
    finally:
        instance.close()


# (step key, label, parent step or None). Wrapped where the server looks them up
# at call time (module, instance attributes), so the product's path is timed.
STEPS = (
    ("handle_ir", "handle(ir), total", None),
    ("decode", "codec.decode_message (ir and certConf)", None),
    ("checks", "_check: time, nonce, protection", None),
    ("verify", "↳ _verify_protection (MAC key derivation, verify)", "checks"),
    ("mac_secret", "  ↳ mac_secret lookup (DB read; token unseal on a cache miss)", "verify"),
    ("nonce", "↳ transactions.first_use_of_nonce (INSERT)", "checks"),
    ("begin", "transactions.begin (INSERT)", None),
    ("decide", "core decide (rate limit, authenticate, device, policy, issue, audit)", None),
    ("limiter", "↳ rate limit counters (limiter.hit, global + device)", "decide"),
    ("authenticate", "↳ authenticate (credential, consume)", "decide"),
    ("registry", "↳ registry.get (device)", "decide"),
    ("issue", "↳ cas.issue (template, lint if on, store, token sign, verify)", "decide"),
    ("audit", "↳ audit.append", "decide"),
    ("record_issued", "transactions.record_issued", None),
    ("reply_ip", "ip: encode body + MAC protection", None),
    ("handle_certConf", "handle(certConf), total", None),
    ("confirm_get", "transactions.get", None),
    ("confirm", "transactions.confirm (UPDATE)", None),
    ("reply_pkiconf", "pkiconf: encode body + MAC protection", None),
    ("unit_commit", "commit of the request's unit of work (server.unit_of_work exit)", None),
)
# Cross-cutting (inside the steps above, not added to the total).
CROSS_STEPS = (
    ("commit_point", "of which: storage.db.commit_point (before the token signs)"),
    ("db_commit", "of which: all DBAPI commits (with SQLite FULL, each one waits for an fsync)"),
    ("db_execute", "of which: all DBAPI cursor.execute"),
)


def _instrument(server: Any, instance: Any, steps: Any) -> None:
    from protocols.cmp import codec

    codec.decode_message = steps.wrap("decode", codec.decode_message)  # server.py calls codec.decode_message
    server._check = steps.wrap("checks", server._check)
    server._verify_protection = steps.wrap("verify", server._verify_protection)
    server.mac_secret = steps.wrap("mac_secret", server.mac_secret)
    server.decide = steps.wrap("decide", server.decide)
    cas = instance.cas
    cas.issue = steps.wrap("issue", cas.issue)
    core = instance.core
    for owner, name, step in ((core.limiter, "hit", "limiter"), (core.authenticator, "authenticate", "authenticate"),
                              (core.registry, "get", "registry"), (core.audit, "append", "audit")):
        setattr(owner, name, steps.wrap(step, getattr(owner, name)))
    transactions = instance.cmp_transactions
    for name, step in (("first_use_of_nonce", "nonce"), ("begin", "begin"), ("record_issued", "record_issued"),
                       ("get", "confirm_get"), ("confirm", "confirm")):
        setattr(transactions, name, steps.wrap(step, getattr(transactions, name)))
    server.transactions = transactions
    reply = server._reply

    def timed_reply(exchange: Any, body_type: str, *args: Any, **kwargs: Any) -> Any:
        return steps.wrap(f"reply_{body_type}", reply)(exchange, body_type, *args, **kwargs)

    server._reply = timed_reply
    handle = server.handle

    def timed_handle(body: bytes, **kwargs: Any) -> Any:
        # The body tag tells ir from certConf without decoding.
        kind = "handle_ir" if _top(body)[1].tag == 0xA0 else "handle_certConf"
        return steps.wrap(kind, handle)(body, **kwargs)

    server.handle = timed_handle
    unit_of_work = getattr(server, "unit_of_work", None)  # one transaction per request, where the server has it
    if unit_of_work is not None:
        server.unit_of_work = steps.timed_unit(unit_of_work)
    from storage import db

    if hasattr(db, "commit_point"):
        db.commit_point = steps.wrap("commit_point", db.commit_point)
    dialect = instance.engine.dialect
    dialect.do_commit = steps.wrap("db_commit", dialect.do_commit)
    dialect.do_execute = steps.wrap("db_execute", dialect.do_execute)



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per measurement (10; --quick 3)")
    parser.add_argument("--clients", default=None, help="client process counts (1,4,8; --quick 2)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of `ztpki serve` (2)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds before each measurement (2; --quick 0.5)")
    parser.add_argument("--quick", action="store_true", help="3 s per measurement, 2 clients, 0.5 s warm-up: about a minute")
    parser.add_argument("--database", help="SQLAlchemy URL of the instance's store (default: SQLite in the temp home)")
    parser.add_argument("--sqlite-synchronous", choices=("FULL", "NORMAL"),
                        help="write this into the throwaway ztpki.toml (default: what `ztpki init` writes, FULL)")
    parser.add_argument("--lint", default="configured,off",
                        help="which enb lint settings to serve: configured (profiles.toml as init wrote it), off, on")
    parser.add_argument("--profile", action="store_true",
                        help="also: in-process per-step breakdown and cProfile of handle() (no server)")
    parser.add_argument("--profile-count", type=int, default=None, help="enrolments for --profile (300; --quick 100)")
    parser.add_argument("--retries", type=int, default=None,
                        help=f"re-run a measurement disturbed by other load (> {MAX_OTHER_LOAD} cores) up to this "
                             "many times, keeping the least disturbed (2; --quick 0)")
    parser.add_argument("--start-method", choices=("spawn", "fork", "forkserver"), default="spawn")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))  # the finally block cleans up

    seconds = args.seconds if args.seconds is not None else (3.0 if args.quick else 10.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0)
    client_counts = [int(c) for c in (args.clients or ("2" if args.quick else "1,4,8")).split(",")]
    profile_count = args.profile_count or (100 if args.quick else 300)
    if args.retries is None:
        args.retries = 0 if args.quick else 2
    ctx = mp.get_context(args.start_method)

    from ztpki.config import RaSettings
    from ztpki.setup_instance import init_instance

    say(f"# ztpki CMP benchmark: {os.cpu_count()} CPUs, Python {platform.python_version()}, commit {revision()}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    say(f"# `ztpki serve --workers {args.workers}`, {seconds:g} s per measurement after {warmup:g} s warm-up, "
         f"clients {','.join(map(str, client_counts))} (spawn), load average "
         f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")

    tmp = Path(tempfile.mkdtemp(prefix="ztpki-cmp-bench-"))
    server: Server | None = None
    summary: list[dict[str, Any]] = []
    try:
        home = tmp / "home"
        init_instance(home, database=args.database).close()
        from ztpki.config import load_settings, write_settings

        # The global rate limit ([ra] global_limit, 200/s by default) would cap
        # the run: raise it, and say so below.
        configured = load_settings(home)
        write_settings(dataclasses.replace(
            configured,
            ra=dataclasses.replace(configured.ra, global_limit=1_000_000),
            sqlite_synchronous=args.sqlite_synchronous or configured.sqlite_synchronous,
        ))
        instance = open_instance(home)
        settings = instance.settings
        instance.close()
        configured_lint = profile_lint(home, PROFILE)
        ra = settings.ra
        say(f"# instance: EC P-256 CA in its own SoftHSM2 token, {store_text(settings)}")
        say(f"# profile {PROFILE!r}: lint = {str(configured_lint).lower()} in HOME/profiles.toml as `ztpki init` wrote it")
        say(f"# rate limits ([ra] in ztpki.toml): global raised to {ra.global_limit} requests/{ra.global_window_seconds} s "
             f"(default {RaSettings().global_limit}), {ra.per_device_limit} per device/{ra.per_device_window_seconds} s. "
             f"Every device enrols once (certConf does not count); 'busy' refusals are counted below.")
        say("# MAC credentials: one per device, no use limit (create_mac default); PasswordBasedMac, 500 iterations")

        sign = token_sign_rate(ctx, home, 1.0 if args.quick else min(seconds, 3.0))
        say_token_sign(sign)

        health: dict[int, dict[str, Any]] = {}
        series = 0
        for lint, label in lint_modes(args.lint.split(","), configured_lint):
            set_profile_lint(home, PROFILE, lint)
            # Size the pools: in-process time per enrolment gives an upper bound of the rate.
            calibrate = register(home, tmp, 8, f"c{series}")
            probe = in_process_enrolments(home, calibrate)
            # The first ones make the CMP protection identity. CPU time, not wall: other load
            # on the machine must not shrink the pools (a client that runs out stops early).
            per_enrolment = statistics.median(probe["each"][2:])
            cpu_per_enrolment = statistics.median(probe["each_cpu"][2:])
            ceiling = min(args.workers / cpu_per_enrolment, float(ra.global_limit))
            say(f"\n## {label}: in-process handle(ir)+handle(certConf) {1e3 * per_enrolment:.1f} ms wall, "
                 f"{1e3 * cpu_per_enrolment:.1f} ms CPU (median of {len(probe['each']) - 2}; no HTTP) "
                 f"-> pools sized for up to {1.5 * ceiling:,.0f} enrolments/s")
            pools: dict[int, list[list[tuple[str, str]]]] = {}
            t0 = time.perf_counter()
            for clients in client_counts:
                per_client = math.ceil(1.5 * ceiling * (seconds + warmup) / clients) + 10
                per_client = min(per_client, math.ceil(1.5 / cpu_per_enrolment * (seconds + warmup)) + 10)
                series += 1
                every = register(home, tmp, per_client * clients, f"s{series}")
                pools[clients] = [every[i * per_client:(i + 1) * per_client] for i in range(clients)]
            say(f"# registered {sum(len(p) for c in pools.values() for p in c):,} devices + MAC credentials "
                 f"in {time.perf_counter() - t0:.1f} s")
            server = Server(home, args.workers, tmp / "server.log")
            server.start()
            say(f"# server pid {server.process.pid if server.process else '?'}, workers {server.children()}, "
                 f"http://127.0.0.1:{server.port}")
            for clients in client_counts:
                if clients not in health:
                    for attempt in range(args.retries + 1):
                        again = run_clients(ctx, _client, server, "health", clients, seconds, warmup)
                        say(f"GET /health      {clients} client(s): " + describe(again, "req/s  "))
                        if clients not in health or again["other_cores"] < health[clients]["other_cores"]:
                            health[clients] = again
                        if again["other_cores"] <= MAX_OTHER_LOAD or attempt == args.retries:
                            break
                        time.sleep(5)
                result = None
                for attempt in range(args.retries + 1):
                    if attempt:  # fresh devices: each one enrols once
                        time.sleep(5)
                        series += 1
                        per_client = len(pools[clients][0])
                        every = register(home, tmp, per_client * clients, f"s{series}")
                        pools[clients] = [every[i * per_client:(i + 1) * per_client] for i in range(clients)]
                    again = run_clients(ctx, _client, server, "cmp", clients, seconds, warmup, pools[clients])
                    say(f"ir+certConf      {clients} client(s): " + describe(again, "enrol/s"))
                    if result is None or again["other_cores"] < result["other_cores"]:
                        result = again
                    if again["other_cores"] <= MAX_OTHER_LOAD:
                        break
                    if attempt < args.retries:
                        say("    disturbed by other load: once more, the least disturbed run is kept")
                assert result is not None
                result["label"] = label
                result["health"] = health[clients]
                summary.append(result)
                for sample in result["samples"]:
                    say(f"    e.g. {sample}")
                if not result["verified"]:
                    say("    ⚠ a client never verified an answer with the full decoder")
            server.stop()
            server = None

        _print_summary(summary, sign, args.workers, seconds)

        if args.profile:
            set_profile_lint(home, PROFILE, False)
            credentials = register(home, tmp, profile_count + 20, "p")
            in_process_enrolments(home, credentials[:20])  # warm: protection identity, caches
            rest = credentials[20:]
            half = len(rest) // 2
            # cProfile first: the step timers patch module and class attributes for good.
            profiled = in_process_enrolments(home, rest[half:], cprofile=True)
            steps = in_process_enrolments(home, rest[:half], profile_steps=True)
            _print_profile(steps, profiled)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _print_summary(summary: list[dict[str, Any]], sign: dict[str, Any], workers: int, seconds: float) -> None:
    say("")
    say(f"## CMP ir + certConf over HTTP (`ztpki serve --workers {workers}`, {seconds:g} s per measurement; "
         "rates wall-clock, summed over the clients)")
    say("")
    say("| lint (enb) | clients | enrolments/s | GET /health req/s | share of /health ÷ 2 | "
         "server µs CPU/enrolment | server cores busy | client µs CPU/enrolment | errors | other load (cores) |")
    say("|---|---|---|---|---|---|---|---|---|---|")
    for r in summary:
        h = r["health"]
        errors = sum(r["errors"].values())
        error_text = str(errors) if not errors else f"{errors}: " + ", ".join(f"{k} {v}" for k, v in r["errors"].items())
        other = max(r["other_cores"], h["other_cores"])
        say(f"| {r['label']} | {r['clients']} | {r['rate']:,.1f} | {h['rate']:,.0f} | "
             f"{100 * r['rate'] / (h['rate'] / 2):.1f} % | {r['server_us']:,.0f} | {r['server_cores']:.2f} | {r['client_us']:,.0f} | "
             f"{error_text} | {other:.2f}{' ⚠' if other > MAX_OTHER_LOAD else ''} |")
    say("")
    if summary:
        r = summary[0]
        say(f"Client side: {r['build_us']:,.0f} µs CPU to pre-build one ir (outside the window). "
             f"Connections: gunicorn's sync workers close after every response, "
             f"{summary[-1]['opened']:,} connections for {summary[-1]['requests']:,} requests in the last run.")
        per_request = {x["clients"]: x["health"]["server_us"] for x in summary}
        say("GET /health server CPU per request: "
             + ", ".join(f"{us:,.0f} µs ({c} client{'s' if c > 1 else ''})" for c, us in sorted(per_request.items())))
    say(f"Token: {sign['rate']:,.0f} EC P-256 signatures/s in one process ({1e6 / sign['rate']:,.0f} µs each); "
         "an enrolment makes one token signature (the certificate; replies are MAC-protected).")


def _print_profile(steps: dict[str, Any], profiled: dict[str, Any]) -> None:
    count = steps["count"]
    total = steps["handle_s"]["ir"] + steps["handle_s"]["certConf"]
    say("")
    say(f"## In-process, lint off: {count} enrolments through cmp_server_for(instance).handle "
         f"({1e6 * total / count:,.0f} µs wall, {1e6 * steps['cpu_s'] / count:,.0f} µs CPU per enrolment "
         f"with the timers in place; no HTTP, no client work)")
    say("")
    say("| step | µs/enrolment | share |")
    say("|---|---|---|")
    for key, label, _parent in STEPS:
        value = steps["steps"].get(key)
        if value is None:
            continue
        say(f"| {label} | {1e6 * value / count:,.0f} | {100 * value / total:.0f} % |")
    top_level = [k for k, _, parent in STEPS if parent is None and not k.startswith("handle_")]
    rest = total - sum(steps["steps"].get(k, 0.0) for k in top_level)
    say(f"| rest (route, exchange, body readers, certHash, cert_requests, glue) | {1e6 * rest / count:,.0f} | "
         f"{100 * rest / total:.0f} % |")
    say(f"| **total handle(ir) + handle(certConf)** | **{1e6 * total / count:,.0f}** | 100 % |")
    for key, label in CROSS_STEPS:
        value = steps["steps"].get(key)
        if value is not None:
            say(f"| ↳ {label} ({steps['calls'].get(key, 0) / count:.1f} per enrolment) | "
                 f"{1e6 * value / count:,.0f} | {100 * value / total:.0f} % |")
    pc = profiled["count"]
    say_cprofile(f"## cProfile of handle() only, lint off, {pc} enrolments "
                 f"({1e6 * (profiled['handle_s']['ir'] + profiled['handle_s']['certConf']) / pc:,.0f} µs per enrolment "
                 "under the profiler)", profiled)


if __name__ == "__main__":
    run(main)

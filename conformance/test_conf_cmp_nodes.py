"""A CMP certConf is handled whichever worker or node receives it (issue 5),
on SQLite and on PostgreSQL.

Two `ztpki serve` processes ("nodes" A and B, two gunicorn workers each) run on
the same instance home and the same database, on two ports. The Python client
(protocols/cmp/client.py) sends the ir to one node and the certConf to the
other; the transaction must live in the store, not in a process. A third node
C on an instance of its own (another database) is the control: the same
certConf sent there is refused, so the crossing really goes through the store.

Inside one node, `openssl cmp` sends ir and certConf on separate connections;
run in parallel, the flows spread over both workers, which the access log
(gunicorn, with the worker pid at the end of each line) shows.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftools import Instance, Server, free_port, init_instance, run, ztpki
from conftools import pg_cluster  # noqa: F401  (fixture)
from pgcluster import PostgresCluster
from protocols.cmp import codec
from protocols.cmp.bodies import FailInfo, PkiStatus
from protocols.cmp.client import MacCredential, cert_conf, cert_request, issued_certificate, post, refusal

CMP_PATH = ".well-known/cmp"
WORKERS = 2


@dataclasses.dataclass
class Nodes:
    backend: str
    a: Server
    b: Server
    stranger: Server  # its own instance and database
    workdir: Path
    credentials: dict[str, MacCredential]  # by device serial; BATCH: the control and the openssl flows

    @property
    def inst(self) -> Instance:
        return self.a.inst


def start(inst: Instance, log_path: Path, port: int | None = None) -> Server:
    """`ztpki serve --access-log` with 2 workers on inst.port, or on another free port."""
    for _attempt in range(3):
        on = inst if port is None else dataclasses.replace(inst, port=port, base_url=f"http://127.0.0.1:{port}")
        server = Server(on, log_path, "--workers", WORKERS, "--access-log")
        if server.start():
            return server
        if port is None:
            pytest.skip("the port chosen at init was taken before ztpki serve bound it")
        port = free_port()
    pytest.fail(f"no free port for ztpki serve after 3 tries; last log:\n{server.log()}")


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def nodes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    backend: str = request.param
    base = tmp_path_factory.mktemp(f"nodes-{backend}")
    cleanups: list[Callable[[], None]] = []
    started: list[Server] = []
    try:
        databases: list[tuple[object, ...]] = [(), ()]
        if backend == "postgresql":
            cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
            for i in range(2):
                name = f"ztpki_nodes_{uuid.uuid4().hex[:12]}"
                databases[i] = ("--database", cluster.create_database(name))
                cleanups.append(functools.partial(cluster.drop_database, name))
        with ThreadPoolExecutor(max_workers=2) as pool:
            inst, other = pool.map(lambda name, db: init_instance(base / name, *db), ("home", "stranger"), databases)
        workdir = base / "work"
        workdir.mkdir()
        # The three nodes come up while the devices are registered.
        with ThreadPoolExecutor(max_workers=3) as pool:
            starting = [
                pool.submit(start, inst, base / "node-a.log"),
                pool.submit(start, inst, base / "node-b.log", free_port()),
                pool.submit(start, other, base / "node-c.log"),
            ]
            try:
                credentials = register(inst.home, workdir)
            finally:
                for future in starting:
                    if future.exception() is None:
                        started.append(future.result())
            a, b, c = (future.result() for future in starting)
        yield Nodes(backend, a, b, c, workdir, credentials)
        for server in started:
            server.assert_alive()
    finally:
        codes = {server.url: (server.stop(), server) for server in started}
        for cleanup in cleanups:
            cleanup()
    for url, (code, server) in codes.items():
        assert code == 0, f"ztpki serve on {url} exited {code} on SIGTERM; its log:\n{server.log()}"


# -- helpers ---------------------------------------------------------------------------------


ACCEPTING = [f"ACC-{i}" for i in range(4)]
REJECTING = [f"REJ-{i}" for i in range(2)]
CONTROL = "CTRL"
FLOWS = [f"OSSL-{i:02d}" for i in range(20)]
BATCH = "nodes-batch"


def register(home: Path, workdir: Path) -> dict[str, MacCredential]:
    """Every device of the module in one `ztpki devices import`; a MAC credential
    (`ztpki credentials create --device SERIAL --kind mac --json`) for each
    device of the crossing tests, one batch credential (the device names itself
    in the subject) for the control and the openssl flows."""
    serials = ACCEPTING + REJECTING + [CONTROL] + FLOWS
    records = workdir / "devices.csv"
    records.write_text("serial,vendor,profile\n" + "".join(f"{s},,enb\n" for s in serials))
    ztpki("devices", "import", records, home=home)

    def create(binding: tuple[str, str]) -> MacCredential:
        out = ztpki("credentials", "create", *binding, "--kind", "mac", "--json", home=home).stdout
        created = json.loads(out[out.index("{") : out.rindex("}") + 1])
        return MacCredential(created["reference"], created["secret"].encode())

    bindings = {s: ("--device", s) for s in ACCEPTING + REJECTING} | {BATCH: ("--batch", BATCH)}
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(bindings, pool.map(create, bindings.values())))


def send(server: Server, message: bytes) -> codec.PkiMessage:
    """POST to the node's CMP endpoint; a non-200 (a 500, say) fails with the node's log."""
    try:
        reply = post(f"{server.url}/{CMP_PATH}", message)
    except OSError as exc:  # URLError, HTTPError (a 500, say), a reset connection
        pytest.fail(f"CMP POST to {server.url} failed: {exc!r}\n--- its log ---\n{server.log()}", pytrace=False)
    server.assert_alive()
    return reply


def enrol(server: Server, credential: MacCredential, serial: str) -> tuple[bytes, bytes]:
    """ir on `server`; (transactionID, DER certificate) of the ip."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, serial)])
    tid, request = cert_request(credential, key, subject=subject)
    reply = send(server, request)
    assert reply.body_type == "ip", refusal(reply)
    assert reply.header.transaction_id == tid
    certificate = issued_certificate(reply)
    assert x509.load_der_x509_certificate(certificate).public_key() == key.public_key()
    return tid, certificate


def assert_refused(reply: codec.PkiMessage, fail_info: FailInfo, where: Server) -> None:
    assert reply.body_type == "error", f"{where.url} answered {reply.body_type}, not an error"
    status = refusal(reply)
    assert status.status == PkiStatus.REJECTION, status
    assert status.fail_info == {fail_info}, status


def write_pem(der_certificate: bytes, path: Path) -> Path:
    path.write_bytes(x509.load_der_x509_certificate(der_certificate).public_bytes(serialization.Encoding.PEM))
    return path


def verify(inst: Instance, certificate: Path) -> None:
    out = run(["openssl", "verify", "-CAfile", inst.root_pem, "-untrusted", inst.issuing_pem, certificate]).stdout
    assert out.strip().endswith("OK"), out


def recorded_statuses(inst: Instance, certificates: list[bytes]) -> list[str]:
    """The store's status of each certificate (`ztpki certs list --json`)."""
    records = json.loads(ztpki("certs", "list", "--json", home=inst.home).stdout)
    by_serial = {int(r["serial"].replace(":", ""), 16): str(r["status"]) for r in records}
    return [by_serial.get(x509.load_der_x509_certificate(c).serial_number, "missing") for c in certificates]


def ocsp_status(server: Server, certificate: Path) -> str:
    out = run([
        "openssl", "ocsp", "-issuer", server.inst.issuing_pem, "-cert", certificate,
        "-url", f"{server.url}/ocsp", "-CAfile", server.inst.root_pem,
    ]).stdout
    match = re.search(rf"^{re.escape(str(certificate))}: (\w+)", out, re.MULTILINE)
    assert match, out
    return match.group(1)


# -- ir on one node, certConf on the other ------------------------------------------------------------


def crossing(nodes: Nodes, i: int) -> tuple[Server, Server]:
    """A→B for even i, B→A for odd i."""
    return (nodes.a, nodes.b) if i % 2 == 0 else (nodes.b, nodes.a)


def test_certconf_on_the_other_node_completes_the_enrolment(nodes: Nodes) -> None:
    issued = []
    for i, serial in enumerate(ACCEPTING):
        first, second = crossing(nodes, i)
        credential = nodes.credentials[serial]
        tid, certificate = enrol(first, credential, serial)

        confirmed = send(second, cert_conf(credential, tid, certificate))
        assert confirmed.body_type == "pkiconf", refusal(confirmed)
        assert confirmed.header.transaction_id == tid

        pem = write_pem(certificate, nodes.workdir / f"{serial}.pem")
        verify(nodes.inst, pem)
        assert ocsp_status(second, pem) == "good"
        issued.append(certificate)

        # The transaction is confirmed for both nodes: the same certConf sent
        # again (its pkiConf lost, issue 18) gets pkiConf on either node; one
        # for another certificate is a CMP error, not a 500, and revokes nothing.
        for node in (first, second):
            assert send(node, cert_conf(credential, tid, certificate)).body_type == "pkiconf"
            assert_refused(send(node, cert_conf(credential, tid, b"another")), FailInfo.BAD_REQUEST, node)

    assert recorded_statuses(nodes.inst, issued) == ["valid"] * len(issued)


def test_certconf_rejecting_on_the_other_node_revokes(nodes: Nodes) -> None:
    rejected = []
    for i, serial in enumerate(REJECTING):
        first, second = crossing(nodes, i)
        credential = nodes.credentials[serial]
        tid, certificate = enrol(first, credential, serial)
        pem = write_pem(certificate, nodes.workdir / f"{serial}.pem")
        assert ocsp_status(second, pem) == "good"  # issued, not yet confirmed

        reply = send(second, cert_conf(credential, tid, certificate, accept=False))
        assert reply.body_type == "pkiconf", refusal(reply)

        assert ocsp_status(first, pem) == "revoked"
        assert ocsp_status(second, pem) == "revoked"
        # and a late acceptance, on either node, is refused
        for node in (first, second):
            assert_refused(send(node, cert_conf(credential, tid, certificate)), FailInfo.BAD_REQUEST, node)
        rejected.append(certificate)

    assert recorded_statuses(nodes.inst, rejected) == ["revoked"] * len(rejected)


def test_certconf_to_a_node_on_another_database_is_refused(nodes: Nodes) -> None:
    """The control: node C shares neither home nor database with A and B, so
    the certConf that B then accepts is refused there (no such senderKID)."""
    credential = nodes.credentials[BATCH]
    tid, certificate = enrol(nodes.a, credential, CONTROL)

    elsewhere = send(nodes.stranger, cert_conf(credential, tid, certificate))
    assert_refused(elsewhere, FailInfo.BAD_MESSAGE_CHECK, nodes.stranger)

    confirmed = send(nodes.b, cert_conf(credential, tid, certificate))  # still open in the shared store
    assert confirmed.body_type == "pkiconf", refusal(confirmed)


# -- inside one node: openssl cmp flows over both workers -----------------------------------------------------------


ACCESS_LINE = re.compile(r'"POST /\.well-known/cmp HTTP/[\d.]+" (\d{3}) (\d+|-) .* <(\d+)>$')
PKICONF_MAX = 600  # bytes: a MAC-protected pkiconf; an ip carries the certificate, its chain and caPubs


def test_openssl_flows_spread_over_both_workers_of_one_node(nodes: Nodes) -> None:
    node = nodes.a
    credential = nodes.credentials[BATCH]  # the device names itself in the subject
    log_start = len(node.log_path.read_bytes())

    def flow(serial: str) -> str:
        key = nodes.workdir / f"{serial}.key"
        cert = nodes.workdir / f"{serial}.pem"
        run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key])
        proc = run([
            "openssl", "cmp", "-cmd", "ir", "-server", f"127.0.0.1:{node.inst.port}", "-path", CMP_PATH,
            "-ref", credential.reference, "-secret", f"pass:{credential.secret.decode()}",
            "-newkey", key, "-subject", f"/CN={serial}", "-recipient", "/CN=ztpki",
            "-trusted", node.inst.root_pem, "-certout", cert,
        ], check=False, timeout=60)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "received PKICONF" in out, out
        verify(nodes.inst, cert)
        return serial

    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = []
        for future in [pool.submit(flow, s) for s in FLOWS]:
            try:
                future.result()
            except AssertionError as exc:
                failures.append(str(exc))
    assert not failures, "\n\n".join(failures[:3]) + "\n--- server log ---\n" + node.log()
    node.assert_alive()

    # Two CMP POSTs per flow, all answered 200: the ip (large) and the pkiconf (small).
    lines = node.log_path.read_bytes()[log_start:].decode(errors="replace").splitlines()
    answers = [m.groups() for m in map(ACCESS_LINE.search, lines) if m]
    assert len(answers) == 2 * len(FLOWS), "\n".join(lines)
    assert {status for status, _, _ in answers} == {"200"}, "\n".join(lines)
    confirmations = Counter(pid for _, size, pid in answers if int(size) <= PKICONF_MAX)
    assert sum(confirmations.values()) == len(FLOWS), "\n".join(lines)
    assert len(confirmations) == WORKERS, f"certConfs per worker pid: {dict(confirmations)}\n" + "\n".join(lines)

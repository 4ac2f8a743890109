"""Security issue 10, finding 6c: a flood of bad requests must not fill the
disk through the audit log.

A running `ztpki serve` is flooded over HTTP with refusals nobody
authenticated: garbage CMP bodies, MAC-protected CMP with a senderKID no
credential has (`openssl cmp -reqout` made it once), EST simpleenroll with a
wrong HTTP Basic password. The hash-chained audit_log may not grow with the
flood; the refusals are counted in audit_noise, one row per (interval,
source, protocol, reason). The figures (audit bytes per second written) are
printed for `pytest -s`.

The store is read with the stdlib's sqlite3 (these tests look at ztpki from
outside only).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftools import Server, openssl_csr, run, serving, ztpki
from conftools import workdir  # noqa: F401  (fixture)

FLOOD = 150  # requests of each kind, from one source
SOURCE_CAP = 256  # [ra] noise_sources_per_interval, its default
SOURCES = SOURCE_CAP + 44  # loopback addresses of the spraying client (127.0.1.0 ...)
TIME_LIMIT = 120.0  # seconds for the whole flood, whatever the machine


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(tmp_path_factory, "noisy")


def _table_bytes(db: Path, table: str) -> tuple[int, int]:
    """(rows, bytes of their column values) of one table; (0, 0) if it is absent."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
        if not columns:
            return 0, 0
        size = " + ".join(f"COALESCE(LENGTH(CAST({c} AS BLOB)), 0)" for c in columns)
        rows, total = conn.execute(f"SELECT COUNT(*), COALESCE(SUM({size}), 0) FROM {table}").fetchone()
        return int(rows), int(total)


def _audit_bytes(server: Server) -> dict[str, tuple[int, int]]:
    db = server.inst.home / "ztpki.db"
    return {table: _table_bytes(db, table) for table in ("audit_log", "audit_noise")}


def _post(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]) -> int:
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    return response.status


def _unknown_kid_ir(server: Server, workdir: Path) -> bytes:
    """A MAC-protected ir whose senderKID names no credential, as openssl cmp sends it."""
    key = workdir / "flood.key"
    run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key])
    saved = workdir / "flood-ir.der"
    proc = run(
        ["openssl", "cmp", "-cmd", "ir", "-server", f"127.0.0.1:{server.inst.port}", "-path", ".well-known/cmp",
         "-ref", "no-such-reference", "-secret", "pass:guess", "-newkey", key, "-subject", "/CN=FLOOD",
         "-recipient", "/CN=ztpki", "-trusted", server.inst.root_pem, "-certout", workdir / "never.pem",
         "-reqout", saved],
        check=False, timeout=60,
    )
    assert proc.returncode != 0 and "badMessageCheck" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return saved.read_bytes()


def _flood(server: Server, requests: list[tuple[str, bytes, dict[str, str]]], count: int, source: str,
           deadline: float) -> dict[int, int]:
    statuses: dict[int, int] = {}
    conn = http.client.HTTPConnection("127.0.0.1", server.inst.port, timeout=30, source_address=(source, 0))
    try:
        for i in range(count):
            if time.monotonic() > deadline:
                break
            path, body, headers = requests[i % len(requests)]
            status = _post(conn, path, body, headers)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        conn.close()
    return statuses


def test_a_flood_of_unauthenticated_refusals_is_counted_not_chained(noisy: Server, workdir: Path) -> None:  # noqa: F811
    cmp_headers = {"Content-Type": "application/pkixcmp"}
    csr = openssl_csr(workdir, "flood", "FLOOD-EST")
    pem_body = "".join(line for line in csr.read_text().splitlines() if not line.startswith("-----"))
    wrong = base64.b64encode(b"est-nobody:not-the-password").decode()
    kinds = {
        "cmp garbage": (".well-known/cmp", os.urandom(300), cmp_headers),
        "cmp unknown senderKID": (".well-known/cmp", _unknown_kid_ir(noisy, workdir), cmp_headers),
        "est wrong Basic password": (".well-known/est/simpleenroll", pem_body.encode(),
                                     {"Content-Type": "application/pkcs10", "Authorization": f"Basic {wrong}"}),
    }
    deadline = time.monotonic() + TIME_LIMIT
    rounds = []
    for round_ in ("first flood", "second flood"):
        before = _audit_bytes(noisy)
        started = time.monotonic()
        sent = 0
        for name, (path, body, headers) in kinds.items():
            statuses = _flood(noisy, [("/" + path, body, headers)], FLOOD, "127.0.0.1", deadline)
            assert all(status < 500 or status == 503 for status in statuses), (name, statuses)
            sent += sum(statuses.values())
        elapsed = time.monotonic() - started
        after = _audit_bytes(noisy)
        noisy.assert_alive()
        chain_rows = after["audit_log"][0] - before["audit_log"][0]
        noise_rows = after["audit_noise"][0] - before["audit_noise"][0]
        written = sum(after[t][1] - before[t][1] for t in after)
        print(f"\n{round_}: {sent} bad requests in {elapsed:.1f} s ({sent / elapsed:.0f}/s): audit_log "
              f"+{chain_rows} rows +{after['audit_log'][1] - before['audit_log'][1]} B, audit_noise "
              f"+{noise_rows} rows +{after['audit_noise'][1] - before['audit_noise'][1]} B; "
              f"{written / elapsed:.0f} audit bytes/s, {written / sent:.1f} B per request")
        assert sent >= 3 * FLOOD * 0.9, "the flood did not get through in time"
        rounds.append((sent, chain_rows, noise_rows))

    # At most one summary record per closed interval may join the chain.
    assert sum(chain for _, chain, _ in rounds) <= 2, f"chained audit records for unauthenticated refusals: {rounds}"
    # Once a (source, protocol, reason) has its row, more of the same add
    # none (unless the interval turned meanwhile and its summary was chained).
    assert rounds[1][2] == 0 or rounds[1][1] == 1, rounds
    sent = sum(n for n, _, _ in rounds)
    noise = ztpki("audit", "noise", "--json", home=noisy.inst.home).stdout
    rows = [row for row in json.loads(noise) if row["source"] == "127.0.0.1"]
    # One row per (interval, protocol, reason): a handful, whatever the flood's size.
    assert 3 <= len(rows) <= 12, rows
    assert sum(row["count"] for row in rows) >= sent - 1  # the openssl cmp probe came from 127.0.0.1 too
    assert {row["protocol"] for row in rows} >= {"cmp", "est"}


def test_a_client_spraying_source_addresses_is_folded_into_one_source(noisy: Server) -> None:
    garbage = [("/.well-known/cmp", os.urandom(200), {"Content-Type": "application/pkixcmp"})]
    deadline = time.monotonic() + TIME_LIMIT
    before = _audit_bytes(noisy)
    for n in range(SOURCES):
        _flood(noisy, garbage, 2, f"127.0.{1 + n // 256}.{n % 256}", deadline)
    after = _audit_bytes(noisy)
    assert after["audit_log"][0] - before["audit_log"][0] <= 2
    rows = json.loads(ztpki("audit", "noise", "--json", home=noisy.inst.home).stdout)
    sources = {row["source"] for row in rows}
    # The cap counts distinct sources per interval; past it, one '*' row per reason.
    # +2: the first test's 127.0.0.1, and a race between the two workers.
    assert len(sources - {"*"}) <= SOURCE_CAP + 2, len(sources)
    assert "*" in sources
    assert sum(row["count"] for row in rows if row["source"] != "127.0.0.1") == 2 * SOURCES

"""kill -9 of `ztpki serve` under CMP load, then a restart (issue 18).

Four clients enrol over HTTP (ir, and certConf for half the devices) while
the whole process group (supervisor, workers, maintenance) is killed with
SIGKILL. After a restart, with no CMP traffic, within the confirmation wait
and one sweep interval: no certificate row is `signing`, no CMP transaction
is `open` or `awaiting_confirm`, every certificate no client confirmed is
revoked in the store, by OCSP and on the served CRL, every certificate whose
certConf the server took is good, and the audit log verifies.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from sqlalchemy import select

from conftools import Server, edit_config, init_instance, ztpki
from protocols.cmp.client import MacCredential, cert_conf, cert_request, issued_certificate, post
from ra.schema import cmp_transactions
from ztpki.instance import Instance

CONFIRM_WAIT = 10
SWEEP = 2
SIGNING_BOUND = 5  # the smallest [maintenance] signing_bound_seconds allows
DEVICES = 400


def _enrol_until(url: str, credentials: list[MacCredential], stop: threading.Event, confirmed: set[int],
                 received: set[int]) -> None:
    for index, credential in enumerate(credentials):
        if stop.is_set():
            return
        try:
            tid, request = cert_request(credential, ec.generate_private_key(ec.SECP256R1()))
            certificate = issued_certificate(post(url, request, timeout=5))
            serial = x509.load_der_x509_certificate(certificate).serial_number
            received.add(serial)
            if index % 2 == 0 and post(url, cert_conf(credential, tid, certificate), timeout=5).body_type == "pkiconf":
                confirmed.add(serial)
        except Exception:  # the kill cuts requests off mid-way: that is the point
            continue


def test_kill_9_under_cmp_load_is_repaired_after_a_restart(tmp_path: Path) -> None:
    inst = init_instance(tmp_path / "home")
    edit_config(inst, cmp={"confirm_wait_seconds": CONFIRM_WAIT}, maintenance={"interval_seconds": SWEEP, "signing_bound_seconds": SIGNING_BOUND},
                ra={"global_limit": 100_000})
    instance = Instance.open(inst.home)
    try:
        credentials = []
        for n in range(DEVICES):
            serial = f"K9-{n:04d}"
            instance.registry.register(serial=serial, vendor=None, profile="enb")
            reference, secret = instance.credentials.create_mac(device_serial=serial)
            credentials.append(MacCredential(reference, secret.encode()))
    finally:
        instance.close()

    server = Server(inst, tmp_path / "serve.log")
    assert server.start()
    url = f"{server.url}/.well-known/cmp"
    stop, confirmed, received = threading.Event(), set[int](), set[int]()
    clients = [threading.Thread(target=_enrol_until, args=(url, credentials[i::4], stop, confirmed, received))
               for i in range(4)]
    for client in clients:
        client.start()
    deadline = time.monotonic() + 30
    while len(received) < 40 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.proc is not None
    os.killpg(server.proc.pid, signal.SIGKILL)  # supervisor, workers and maintenance at once
    server.proc.wait()
    stop.set()
    for client in clients:
        client.join(30)
    assert len(received) >= 40, server.log()
    left = _left_behind(inst.home)
    assert left["awaiting_confirm"] > 0, left  # the kill left work for the restart
    print(f"kill -9 after {len(received)} ips ({len(confirmed)} confirmed) left {left}")

    restarted = Server(inst, tmp_path / "serve-again.log")
    assert restarted.start()
    try:
        time.sleep(max(CONFIRM_WAIT, SIGNING_BOUND) + 3 * SWEEP + 2)  # no CMP traffic at all
        instance = Instance.open(inst.home)
        try:
            _assert_repaired(instance, restarted, confirmed, received)
        finally:
            instance.close()
    finally:
        assert restarted.stop() == 0, restarted.log()


def _left_behind(home: Path) -> dict[str, int]:
    instance = Instance.open(home)
    try:
        with instance.engine.connect() as conn:
            statuses = [row.status for row in conn.execute(select(cmp_transactions.c.status))]
        left = {status: statuses.count(status) for status in ("open", "awaiting_confirm")}
        return {**left, "signing": instance.store.count_certificates("signing")}
    finally:
        instance.close()


def _assert_repaired(instance: Instance, server: Server, confirmed: set[int], received: set[int]) -> None:
    store = instance.store
    assert store.count_certificates("signing") == 0
    with instance.engine.connect() as conn:
        statuses = [row.status for row in conn.execute(select(cmp_transactions.c.status))]
    assert not {"open", "awaiting_confirm"} & set(statuses), sorted(set(statuses))
    records = {r.serial: r for r in store.certificates(authority="issuing")}
    for serial in received:  # every certificate a client got is in the store
        assert serial in records
    for serial in confirmed:  # the client saw pkiConf
        assert records[serial].status == "valid", format(serial, "x")
    # A certConf the server took but whose pkiConf the kill cut off counts as
    # confirmed (the client resends it and gets pkiConf): valid exactly when
    # the store says its transaction was confirmed, revoked otherwise.
    with instance.engine.connect() as conn:
        done = {int(row.certificate_serial, 16): row.status for row in conn.execute(
            select(cmp_transactions.c.certificate_serial, cmp_transactions.c.status)
            .where(cmp_transactions.c.certificate_serial.is_not(None)))}
    for serial in received:
        expected = "valid" if done.get(serial) == "confirmed" else "revoked"
        assert records[serial].status == expected, (format(serial, "x"), done.get(serial))
    # The served CRL (fetched over HTTP, as a relying party would) lists exactly the revoked ones.
    crl = x509.load_der_x509_crl(_get(f"{server.url}/crl/issuing.crl"))
    listed = {entry.serial_number for entry in crl}
    assert listed == {s for s, r in records.items() if r.status in ("revoked", "hold")}
    for serial in list(received)[:20]:
        good = records[serial].status == "valid"
        assert _ocsp(instance, server, serial) is (ocsp.OCSPCertStatus.GOOD if good else ocsp.OCSPCertStatus.REVOKED)
    assert ztpki("audit", "verify", home=server.inst.home).returncode == 0


def _get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        data: bytes = response.read()
    return data


def _ocsp(instance: Instance, server: Server, serial: int) -> Any:
    import urllib.request

    from cryptography.hazmat.primitives import hashes, serialization

    issuer = instance.cas.authority("issuing").certificate
    record = instance.store.certificate(serial, "issuing")
    certificate = x509.load_der_x509_certificate(record.der or b"")
    request = ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, hashes.SHA1()).build()
    posted = urllib.request.Request(f"{server.url}/ocsp", data=request.public_bytes(serialization.Encoding.DER),
                                    headers={"Content-Type": "application/ocsp-request"}, method="POST")
    with urllib.request.urlopen(posted, timeout=10) as response:
        return ocsp.load_der_ocsp_response(response.read()).certificate_status

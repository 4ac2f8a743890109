"""Reconciliation (issue 18): rows left 'signing' are revoked as possibly
issued once older than the bound, exactly once however many sweepers run,
together with their audit record; a revocation marks the CRL stale and one
re-issue covers a burst. SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Iterator

import pytest
from cryptography import x509

from ca import issuer as issuer_module
from storage.db import Conflict, now
from ca.issuer import CertificateAuthorities, IssuanceError
from ca.reconcile import POSSIBLY_ISSUED_REASON, reconcile_crls, reconcile_signing
from ca.revocation import ReconcileAction, Revocations
from ca.store import Store
from cahelpers import build_hierarchy, client_order
from hsm import Token

BOUND = timedelta(seconds=60)


@pytest.fixture
def revocations(any_store: Store, token: Token) -> Iterator[Revocations]:
    yield Revocations(build_hierarchy(any_store, token))


def _reserve(store: Store, serial: int, device: str | None = "dev-1") -> None:
    """What issuance commits before the token signs."""
    authority = store.authority("issuing")
    store.reserve_serial(
        authority_id=authority.id, serial=serial, tbs=b"tbs", subject="CN=lost", sans=[], device_id=device,
        profile="client", not_before=now(), not_after=now() + timedelta(days=1),
    )


def _crl_serials(revocations: Revocations) -> set[int]:
    return {entry.serial_number for entry in x509.load_der_x509_crl(revocations.current_crl("issuing").der)}


def test_a_row_signing_longer_than_the_bound_is_revoked_as_possibly_issued(revocations: Revocations) -> None:
    store = revocations.store
    _reserve(store, 0x1234)
    seen: list[ReconcileAction] = []
    revocations.on_reconcile = seen.append
    assert reconcile_signing(revocations, BOUND) == []  # young: a live request may be signing it
    assert store.certificate(0x1234).status == "signing"
    done = reconcile_signing(revocations, BOUND, at=now() + BOUND + timedelta(seconds=1))
    assert [(a.kind, a.ca, a.serial, a.device) for a in done] == [("possibly-issued-revoked", "issuing", 0x1234, "dev-1")]
    assert seen[0] == done[0]
    record = store.certificate(0x1234)
    assert (record.status, record.revocation_reason, record.der) == ("revoked", POSSIBLY_ISSUED_REASON, None)
    assert 0x1234 in _crl_serials(revocations)


def test_concurrent_sweepers_revoke_each_row_exactly_once(revocations: Revocations) -> None:
    for serial in range(0x100, 0x10A):
        _reserve(revocations.store, serial)
    later = now() + BOUND * 2
    results: list[list[ReconcileAction]] = []
    start = threading.Barrier(3)

    def sweeper() -> None:
        start.wait()
        results.append(reconcile_signing(revocations, BOUND, at=later))

    threads = [threading.Thread(target=sweeper) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    serials = sorted(a.serial for result in results for a in result if a.serial is not None)
    assert serials == list(range(0x100, 0x10A))
    assert revocations.store.count_certificates("signing") == 0


def test_a_repair_whose_audit_record_fails_is_not_made(revocations: Revocations) -> None:
    store = revocations.store
    _reserve(store, 0x77)
    authority_id = store.authority("issuing").id
    revision = store.revocation_revision(authority_id)

    def refuse(_action: ReconcileAction) -> None:
        raise RuntimeError("audit log unavailable")

    revocations.on_reconcile = refuse
    with pytest.raises(RuntimeError):
        reconcile_signing(revocations, BOUND, at=now() + BOUND * 2)
    assert store.certificate(0x77).status == "signing"
    assert store.revocation_revision(authority_id) == revision


def test_a_signature_that_lands_after_reconciliation_is_recorded_and_not_delivered(
    revocations: Revocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    cas = revocations.cas
    real_sign = issuer_module.signing.sign_tbs

    def slow_token(tbs: bytes, signer: object) -> bytes:
        # The token outlives the bound: a sweeper revokes the row meanwhile.
        reconcile_signing(revocations, timedelta(0), at=now() + timedelta(seconds=1))
        return real_sign(tbs, signer)  # type: ignore[arg-type]

    monkeypatch.setattr(issuer_module.signing, "sign_tbs", slow_token)
    with pytest.raises(IssuanceError, match="revoked while being signed"):
        cas.issue(client_order("slow")[0])
    (record,) = [r for r in revocations.store.certificates(subject_contains="slow")]
    assert record.status == "revoked" and record.der is not None
    x509.load_der_x509_certificate(record.der).verify_directly_issued_by(cas.authority("issuing").certificate)
    with pytest.raises(Conflict):  # the store refuses to make it valid afterwards
        revocations.store.complete_issuance(record.authority_id, record.serial, record.der)


def test_a_signing_row_can_be_revoked_by_an_admin(revocations: Revocations) -> None:
    _reserve(revocations.store, 0xABC)
    assert revocations.revoke(0xABC, "keyCompromise").status == "revoked"
    assert 0xABC in _crl_serials(revocations)


def test_a_burst_of_revocations_marks_the_crl_stale_and_one_reissue_covers_it(revocations: Revocations) -> None:
    cas: CertificateAuthorities = revocations.cas
    first = revocations.publish_crl("issuing")
    serials = [cas.issue(client_order(f"burst-{i}")[0]).serial for i in range(4)]
    assert revocations.crl_due("issuing") is None
    for serial in serials:
        revocations.revoke(serial, "superseded")
    # No CRL per revocation; the stored one is stale until the next is built.
    latest = revocations.store.latest_crl(cas.authority("issuing").record.id)
    assert latest is not None and latest.crl_number == first.crl_number
    assert revocations.crl_due("issuing") == "stale"
    reissued = reconcile_crls(revocations)
    assert ("issuing", "stale") in [(ca, why) for ca, why, _ in reissued]
    assert [n for ca, _, n in reissued if ca == "issuing"] == [first.crl_number + 1]
    assert set(serials) <= _crl_serials(revocations)
    assert revocations.crl_due("issuing") is None
    assert reconcile_crls(revocations) == []


def test_a_stale_crl_is_reissued_before_it_is_served(revocations: Revocations) -> None:
    serial = revocations.cas.issue(client_order("served")[0]).serial
    before = revocations.current_crl("issuing")
    revocations.revoke(serial, "keyCompromise")
    served = revocations.current_crl("issuing")
    assert served.crl_number > before.crl_number
    assert serial in {e.serial_number for e in x509.load_der_x509_crl(served.der)}
    assert revocations.current_crl("issuing").crl_number == served.crl_number

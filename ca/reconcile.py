"""Reconciliation: finish what a crash left half-done on the CA side (issue 18).

Issuance records the serial and TBSCertificate as 'signing' before the token
signs (record before sign). A crash between that commit and the one that
stores the certificate leaves a row nobody will complete: the token may have
signed it, nobody delivered it. Such a row, once older than any live request
can be, is revoked as possibly issued (as Boulder treats precertificates as
issued), so OCSP answers 'revoked' and the CRL lists it; its audit record is
written in the same transaction.

A revocation marks its CA's CRL stale in the same transaction; a crash
before the re-issue leaves it stale, and the sweep re-issues it.

Every step is a conditional UPDATE or an idempotent re-issue, so any number of
workers and nodes may sweep at once: one wins each row, the others skip it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from storage import db
from storage.db import now
from ca.revocation import ReconcileAction, Revocations

# RFC 5280 §5.3.1 has no reason for "signed, never delivered". The holder
# never received it, so it is "no longer needed": the same reason the CMP
# side gives a certificate whose certConf never came (RFC 4210 §5.3.18).
POSSIBLY_ISSUED_REASON = "cessationOfOperation"
# gunicorn kills a worker whose request runs past its 60 s timeout
# (ztpki/http/server.py), so no request of `ztpki serve` is still signing a row
# reserved longer ago than that.
DEFAULT_SIGNING_BOUND = timedelta(seconds=60)


@dataclass(frozen=True)
class SweepResult:
    revoked: tuple[ReconcileAction, ...]
    crls: tuple[tuple[str, str, int], ...]  # (CA, why, CRL number) re-issued

    @property
    def changed(self) -> bool:
        return bool(self.revoked or self.crls)


def reconcile_signing(
    revocations: Revocations, bound: timedelta = DEFAULT_SIGNING_BOUND, *, at: datetime | None = None
) -> list[ReconcileAction]:
    """Revoke every row still 'signing' that was reserved more than `bound` ago."""
    store = revocations.store
    moment = at or now()
    cutoff = moment - bound
    names = {record.id: record.name for record in store.list_authorities()}
    done: list[ReconcileAction] = []
    for item in store.abandoned_signing(cutoff):
        action = ReconcileAction(
            kind="possibly-issued-revoked",
            ca=names.get(item.authority_id, str(item.authority_id)),
            serial=item.serial,
            reason="left 'signing' by a crash: the token may have signed it; never delivered",
            details={
                "revocation_reason": POSSIBLY_ISSUED_REASON,
                "reserved_at": item.created_at.isoformat(),
                "bound_seconds": int(bound.total_seconds()),
            },
            device=item.device_id,
        )
        with db.unit_of_work(store.engine):
            won = store.finalise_abandoned(item, created_before=cutoff, reason=POSSIBLY_ISSUED_REASON, at=moment)
            if won:
                db.crash_point("reconcile.revoked")
                if revocations.on_reconcile is not None:
                    revocations.on_reconcile(action)
        if won:
            done.append(action)
    return done


def reconcile_crls(revocations: Revocations) -> list[tuple[str, str, int]]:
    """Re-issue every CA's CRL that is missing, stale or due: one per CA per sweep."""
    issued: list[tuple[str, str, int]] = []
    for record in revocations.store.list_authorities():
        if record.kind == "external":
            continue
        why = revocations.crl_due(record.name)
        if why is None:
            continue
        crl = revocations.refresh_crl(record.name)
        if crl is not None:
            issued.append((record.name, why, crl.crl_number))
    return issued


def sweep(revocations: Revocations, bound: timedelta = DEFAULT_SIGNING_BOUND) -> SweepResult:
    """Both, in the order that lets the CRL include what the first revoked."""
    revoked = reconcile_signing(revocations, bound)
    return SweepResult(revoked=tuple(revoked), crls=tuple(reconcile_crls(revocations)))

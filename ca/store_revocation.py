"""The store's revocation, CRL and reconciliation queries (split from
store.py for size; Store inherits them, so it stays the only code that
writes the CA tables).

Consistency between the certificates and the served CRL rests on one
counter per CA, `revocation_revision`: every change of a certificate's
revocation state bumps it in the same transaction, and every CRL records the
revision it was built from. A CRL behind its CA's revision is stale, whatever
crashed in between (issue 18).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Sequence

from sqlalchemy import Connection, Engine, insert, select, update

from storage import db
from storage.db import Conflict, now, serial_hex, utc
from ca.schema import authorities, certificates, crls


@dataclass(frozen=True)
class CrlRecord:
    crl_number: int
    this_update: datetime
    next_update: datetime
    der: bytes
    revocation_revision: int = 0  # the CA's revision the CRL was built from


@dataclass(frozen=True)
class CrlContents:
    revision: int
    entries: list[tuple[int, datetime, str]]  # serial, revocation time, reason


@dataclass(frozen=True)
class AbandonedSigning:
    """A row left 'signing': the token may have signed it, nobody stored the result."""

    authority_id: int
    serial: int
    created_at: datetime
    device_id: str | None


def _bump_revision(conn: Connection, authority_id: int) -> None:
    conn.execute(
        update(authorities)
        .where(authorities.c.id == authority_id)
        .values(revocation_revision=authorities.c.revocation_revision + 1)
    )


class RevocationQueries:
    engine: Engine

    def _begin(self) -> Any:
        return db.begin(self.engine)

    # -- revocation ------------------------------------------------------------

    def set_revocation(
        self,
        authority_id: int,
        serial: int,
        *,
        status: str,
        revoked_at: datetime | None,
        reason: str | None,
        allowed_from: Sequence[str],
    ) -> None:
        """Change a certificate's revocation state and mark its CA's CRL stale, atomically."""
        with self._begin() as conn:
            result = conn.execute(
                update(certificates)
                .where(
                    certificates.c.authority_id == authority_id,
                    certificates.c.serial == serial_hex(serial),
                    certificates.c.status.in_(list(allowed_from)),
                )
                .values(status=status, revoked_at=revoked_at, revocation_reason=reason)
            )
            if result.rowcount != 1:
                raise Conflict(f"certificate {serial_hex(serial)} is not in state {'/'.join(allowed_from)}")
            _bump_revision(conn, authority_id)

    def revoked_entries(self, authority_id: int) -> list[tuple[int, datetime, str]]:
        """Revoked and on-hold certificates that have not expired, for the CRL."""
        return self.crl_contents(authority_id).entries

    def crl_contents(self, authority_id: int) -> CrlContents:
        """The CA's revision and its CRL entries, the revision read first so
        the entries hold at least every change it counts (also under
        PostgreSQL's per-statement snapshots)."""
        with db.connect(self.engine) as conn:
            revision = conn.execute(
                select(authorities.c.revocation_revision).where(authorities.c.id == authority_id)
            ).scalar_one()
            rows = conn.execute(
                select(
                    certificates.c.serial,
                    certificates.c.revoked_at,
                    certificates.c.revocation_reason,
                ).where(
                    certificates.c.authority_id == authority_id,
                    certificates.c.status.in_(["revoked", "hold"]),
                    certificates.c.not_after > now(),
                ).order_by(certificates.c.id)
            ).all()
        entries = [(int(r.serial, 16), utc(r.revoked_at), r.revocation_reason) for r in rows]
        return CrlContents(revision=int(revision), entries=entries)

    # -- CRLs ------------------------------------------------------------------

    def next_crl_number(self, authority_id: int) -> int:
        """Atomically take the next CRL number (RFC 5280 §5.2.3: monotonic;
        a crash after taking one leaves a gap, which §5.2.3 allows)."""
        with self._begin() as conn:
            value = conn.execute(
                update(authorities)
                .where(authorities.c.id == authority_id)
                .values(crl_number=authorities.c.crl_number + 1)
                .returning(authorities.c.crl_number)
            ).scalar_one()
        return int(value)

    def save_crl(self, authority_id: int, crl: CrlRecord) -> None:
        with self._begin() as conn:
            conn.execute(
                insert(crls).values(
                    authority_id=authority_id,
                    crl_number=crl.crl_number,
                    this_update=crl.this_update,
                    next_update=crl.next_update,
                    der=crl.der,
                    revocation_revision=crl.revocation_revision,
                )
            )

    def latest_crl(self, authority_id: int) -> CrlRecord | None:
        with db.connect(self.engine) as conn:
            row = conn.execute(
                select(crls)
                .where(crls.c.authority_id == authority_id)
                .order_by(crls.c.crl_number.desc())
                .limit(1)
            ).first()
        if row is None:
            return None
        return CrlRecord(
            crl_number=row.crl_number,
            this_update=utc(row.this_update),
            next_update=utc(row.next_update),
            der=bytes(row.der),
            revocation_revision=int(row.revocation_revision),
        )

    def revocation_revision(self, authority_id: int) -> int:
        with db.connect(self.engine) as conn:
            return int(conn.execute(
                select(authorities.c.revocation_revision).where(authorities.c.id == authority_id)
            ).scalar_one())

    # -- reconciliation ----------------------------------------------------------

    def abandoned_signing(self, created_before: datetime, limit: int = 500) -> list[AbandonedSigning]:
        """Rows still 'signing' that were reserved before `created_before`."""
        with db.connect(self.engine) as conn:
            rows = conn.execute(
                select(
                    certificates.c.authority_id, certificates.c.serial, certificates.c.created_at,
                    certificates.c.device_id,
                )
                .where(certificates.c.status == "signing", certificates.c.created_at < created_before)
                .order_by(certificates.c.created_at)
                .limit(limit)
            ).all()
        return [AbandonedSigning(r.authority_id, int(r.serial, 16), utc(r.created_at), r.device_id) for r in rows]

    def finalise_abandoned(
        self, item: AbandonedSigning, *, created_before: datetime, reason: str, at: datetime
    ) -> bool:
        """Revoke a row left 'signing' (possibly issued: the token may have
        signed it) and mark the CRL stale. False when another worker or node
        got there first, or issuance completed meanwhile."""
        with self._begin() as conn:
            result = conn.execute(
                update(certificates)
                .where(
                    certificates.c.authority_id == item.authority_id,
                    certificates.c.serial == serial_hex(item.serial),
                    certificates.c.status == "signing",
                    certificates.c.created_at < created_before,
                )
                .values(status="revoked", revoked_at=at, revocation_reason=reason)
            )
            if result.rowcount != 1:
                return False
            _bump_revision(conn, item.authority_id)
        return True

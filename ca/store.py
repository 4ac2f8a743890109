"""The certificate store: the only code that reads and writes the CA tables.

SQLite (a file, the default) or PostgreSQL, the same schema, migrated by
Alembic at open. Every method is one short transaction; nothing is kept in
process memory, so any worker on any node sees the same state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Sequence

from sqlalchemy import Engine, bindparam, func, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from storage import db
from storage.db import Conflict, NotFound, make_engine, now, run_migrations, serial_hex, utc
from ca.schema import authorities, certificates
from ca.store_revocation import AbandonedSigning as AbandonedSigning
from ca.store_revocation import CrlContents as CrlContents
from ca.store_revocation import CrlRecord as CrlRecord
from ca.store_revocation import RevocationQueries

MIGRATIONS = Path(__file__).with_name("migrations")


@dataclass(frozen=True)
class AuthorityRecord:
    id: int
    name: str
    kind: str
    parent_id: int | None
    key_label: str
    sign_algorithm: str
    certificate: bytes
    ocsp_key_label: str | None
    ocsp_certificate: bytes | None
    crl_number: int


@dataclass(frozen=True)
class CertificateRecord:
    authority_id: int
    authority: str
    serial: int
    status: str
    subject: str
    sans: tuple[str, ...]
    device_id: str | None
    profile: str
    not_before: datetime
    not_after: datetime
    der: bytes | None
    revoked_at: datetime | None
    revocation_reason: str | None
    created_at: datetime

    @property
    def serial_hex(self) -> str:
        return serial_hex(self.serial)


def _authority(row: Row[Any]) -> AuthorityRecord:
    return AuthorityRecord(
        id=row.id,
        name=row.name,
        kind=row.kind,
        parent_id=row.parent_id,
        key_label=row.key_label,
        sign_algorithm=row.sign_algorithm,
        certificate=bytes(row.certificate),
        ocsp_key_label=row.ocsp_key_label,
        ocsp_certificate=bytes(row.ocsp_certificate) if row.ocsp_certificate else None,
        crl_number=row.crl_number,
    )


def _certificate(row: Row[Any]) -> CertificateRecord:
    return CertificateRecord(
        authority_id=row.authority_id,
        authority=row.authority_name,
        serial=int(row.serial, 16),
        status=row.status,
        subject=row.subject,
        sans=tuple(json.loads(row.sans)),
        device_id=row.device_id,
        profile=row.profile,
        not_before=utc(row.not_before),
        not_after=utc(row.not_after),
        der=bytes(row.der) if row.der is not None else None,
        revoked_at=utc(row.revoked_at) if row.revoked_at is not None else None,
        revocation_reason=row.revocation_reason,
        created_at=utc(row.created_at),
    )


_CERT_COLUMNS = (
    certificates.c.authority_id,
    authorities.c.name.label("authority_name"),
    certificates.c.serial,
    certificates.c.status,
    certificates.c.subject,
    certificates.c.sans,
    certificates.c.device_id,
    certificates.c.profile,
    certificates.c.not_before,
    certificates.c.not_after,
    certificates.c.der,
    certificates.c.revoked_at,
    certificates.c.revocation_reason,
    certificates.c.created_at,
)


# The hot paths (every issuance, every OCSP request) run statements built
# once: building them per call costs more than the SQLite commit itself.
_RESERVE = insert(certificates)
_SIGNED = (
    update(certificates)
    .where(
        certificates.c.authority_id == bindparam("a"),
        certificates.c.serial == bindparam("s"),
        certificates.c.status == "signing",
    )
    .values(status=bindparam("new_status"), der=bindparam("new_der"))
)
_STATUS = select(
    certificates.c.status, certificates.c.revoked_at, certificates.c.revocation_reason
).where(certificates.c.authority_id == bindparam("a"), certificates.c.serial == bindparam("s"))


class Store(RevocationQueries):
    def __init__(self, url_or_engine: str | Engine, *, sqlite_synchronous: str = "FULL") -> None:
        if isinstance(url_or_engine, str):
            self.engine = make_engine(url_or_engine, sqlite_synchronous=sqlite_synchronous)
        else:
            self.engine = url_or_engine
        self.url = str(self.engine.url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"

    @classmethod
    def open(cls, url_or_engine: str | Engine, **kwargs: Any) -> "Store":
        store = cls(url_or_engine, **kwargs)
        store.migrate()
        return store

    def migrate(self) -> None:
        run_migrations(self.engine, MIGRATIONS, "alembic_version")

    def after_fork(self) -> None:
        """Forget pooled connections inherited from a parent process without closing them."""
        self.engine.dispose(close=False)

    def close(self) -> None:
        self.engine.dispose()

    # -- authorities -------------------------------------------------------

    def add_authority(
        self,
        *,
        name: str,
        kind: str,
        parent_id: int | None,
        key_label: str,
        sign_algorithm: str,
        certificate: bytes,
    ) -> AuthorityRecord:
        try:
            with self._begin() as conn:
                conn.execute(
                    insert(authorities).values(
                        name=name,
                        kind=kind,
                        parent_id=parent_id,
                        key_label=key_label,
                        sign_algorithm=sign_algorithm,
                        certificate=certificate,
                        crl_number=0,
                        created_at=now(),
                    )
                )
        except IntegrityError:
            raise Conflict(f"a CA named {name!r} exists already") from None
        return self.authority(name)

    def set_ocsp_signer(self, authority_id: int, key_label: str, certificate: bytes) -> None:
        with self._begin() as conn:
            conn.execute(
                update(authorities)
                .where(authorities.c.id == authority_id)
                .values(ocsp_key_label=key_label, ocsp_certificate=certificate)
            )

    def authority(self, name: str) -> AuthorityRecord:
        with db.connect(self.engine) as conn:
            row = conn.execute(select(authorities).where(authorities.c.name == name)).first()
        if row is None:
            raise NotFound(f"no CA named {name!r}")
        return _authority(row)

    def authority_by_id(self, authority_id: int) -> AuthorityRecord:
        with db.connect(self.engine) as conn:
            row = conn.execute(select(authorities).where(authorities.c.id == authority_id)).first()
        if row is None:
            raise NotFound(f"no CA with id {authority_id}")
        return _authority(row)

    def list_authorities(self) -> list[AuthorityRecord]:
        with db.connect(self.engine) as conn:
            rows = conn.execute(select(authorities).order_by(authorities.c.id)).all()
        return [_authority(r) for r in rows]

    # -- issuance ----------------------------------------------------------

    def reserve_serial(
        self,
        *,
        authority_id: int,
        serial: int,
        tbs: bytes,
        subject: str,
        sans: Sequence[str],
        device_id: str | None,
        profile: str,
        not_before: datetime,
        not_after: datetime,
    ) -> None:
        """Record a certificate about to be signed. Conflict on a serial reuse."""
        row = {
            "authority_id": authority_id,
            "serial": serial_hex(serial),
            "status": "signing",
            "subject": subject,
            "sans": json.dumps(list(sans)),
            "device_id": device_id,
            "profile": profile,
            "not_before": not_before,
            "not_after": not_after,
            "tbs": tbs,
            "der": None,
            "created_at": now(),
        }
        try:
            with self._begin() as conn:
                conn.execute(_RESERVE, row)
        except IntegrityError:
            raise Conflict(f"serial {serial_hex(serial)} is taken") from None
        # Durable before the token signs (the kill -9 rule), also when the
        # request runs in a unit of work that groups its other writes.
        db.commit_point(self.engine)

    def _set_signed_state(self, authority_id: int, serial: int, status: str, der: bytes | None) -> None:
        with self._begin() as conn:
            result = conn.execute(
                _SIGNED,
                {"a": authority_id, "s": serial_hex(serial), "new_status": status, "new_der": der},
            )
            if result.rowcount != 1:
                raise Conflict(f"serial {serial_hex(serial)} is not awaiting its signature")

    def complete_issuance(self, authority_id: int, serial: int, der: bytes) -> None:
        """Store the signed certificate as 'valid'.

        Conflict when the row is no longer 'signing': reconciliation (or an
        admin) revoked it as possibly issued while the token was slow. The
        certificate is then still recorded on that revoked row, so the store
        keeps what the token signed, and it must not be delivered.
        """
        try:
            self._set_signed_state(authority_id, serial, "valid", der)
        except Conflict:
            with self._begin() as conn:
                conn.execute(
                    update(certificates)
                    .where(
                        certificates.c.authority_id == authority_id,
                        certificates.c.serial == serial_hex(serial),
                        certificates.c.status == "revoked",
                        certificates.c.der.is_(None),
                    )
                    .values(der=der)
                )
            raise

    def fail_issuance(self, authority_id: int, serial: int) -> None:
        """The token refused or produced a bad signature: nothing was issued."""
        self._set_signed_state(authority_id, serial, "failed", None)

    # -- lookups -----------------------------------------------------------

    def _select_certificates(self) -> Any:
        return select(*_CERT_COLUMNS).join(
            authorities, authorities.c.id == certificates.c.authority_id
        )

    def certificate(self, serial: int, authority: str | None = None) -> CertificateRecord:
        query = self._select_certificates().where(certificates.c.serial == serial_hex(serial))
        if authority is not None:
            query = query.where(authorities.c.name == authority)
        with db.connect(self.engine) as conn:
            rows = conn.execute(query).all()
        if not rows:
            raise NotFound(f"no certificate with serial {serial_hex(serial)}")
        if len(rows) > 1:
            raise Conflict(
                f"serial {serial_hex(serial)} exists under several CAs; name the CA"
            )
        return _certificate(rows[0])

    def certificates(
        self,
        *,
        authority: str | None = None,
        status: str | None = None,
        subject_contains: str | None = None,
        subject: str | None = None,
        profile: str | None = None,
        device_id: str | None = None,
        expiring_before: datetime | None = None,
        limit: int | None = None,
    ) -> Iterator[CertificateRecord]:
        query = self._select_certificates().order_by(certificates.c.id)
        if authority is not None:
            query = query.where(authorities.c.name == authority)
        if status is not None:
            query = query.where(certificates.c.status == status)
        if subject_contains is not None:
            query = query.where(certificates.c.subject.contains(subject_contains, autoescape=True))
        if subject is not None:  # exact RFC 4514 text: uses ix_certificates_subject
            query = query.where(certificates.c.subject == subject)
        if profile is not None:
            query = query.where(certificates.c.profile == profile)
        if device_id is not None:
            query = query.where(certificates.c.device_id == device_id)
        if expiring_before is not None:
            query = query.where(certificates.c.not_after < expiring_before)
        if limit is not None:
            query = query.limit(limit)
        with db.connect(self.engine) as conn:
            rows = conn.execute(query).all()
        return (_certificate(r) for r in rows)

    def status_row(self, authority_id: int, serial: int) -> tuple[str, datetime | None, str | None] | None:
        """(status, revoked_at, reason) for OCSP, or None when never issued.

        Every OCSP request runs this, so it goes to the driver directly:
        SQLAlchemy's per-execution bookkeeping cost three times the query
        (bench/ocsp.sh). The SQL is compiled once by SQLAlchemy for the dialect.
        """
        sql, order = self._status_sql()
        values = {"a": authority_id, "s": serial_hex(serial)}
        params: Any = tuple(values[name] for name in order) if order else values
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute(sql, params)
            row = cursor.fetchone()
            cursor.close()
            raw.commit()  # end the read transaction the driver opened
        finally:
            raw.close()
        if row is None:
            return None
        status, revoked_at, reason = row
        if isinstance(revoked_at, str):  # SQLite keeps datetimes as text
            revoked_at = datetime.fromisoformat(revoked_at)
        return status, utc(revoked_at) if revoked_at is not None else None, reason

    def _status_sql(self) -> tuple[str, tuple[str, ...]]:
        cached: tuple[str, tuple[str, ...]] | None = getattr(self, "_status_compiled", None)
        if cached is None:
            compiled = _STATUS.compile(dialect=self.engine.dialect)
            order = tuple(compiled.positiontup or ()) if self.engine.dialect.positional else ()
            cached = (str(compiled), order)
            self._status_compiled = cached
        return cached

    def count_certificates(self, status: str | None = None) -> int:
        query = select(func.count()).select_from(certificates)
        if status is not None:
            query = query.where(certificates.c.status == status)
        with db.connect(self.engine) as conn:
            return int(conn.execute(query).scalar_one())

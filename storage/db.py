"""The database plumbing every package shares: one engine per process,
per-package Alembic histories, the store's errors and small value helpers."""

from __future__ import annotations

import fcntl
import os
import threading
import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, RootTransaction, create_engine, event
from sqlalchemy.exc import OperationalError, SQLAlchemyError


class StoreError(Exception):
    """The database cannot be reached or refused the operation."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


def utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def now() -> datetime:
    return datetime.now(timezone.utc)


def format_time(at: datetime) -> str:
    """UTC with microseconds: both databases keep exactly that precision."""
    return utc(at).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def serial_hex(serial: int) -> str:
    return format(serial, "x")


def parse_serial(text: str) -> int:
    """Accept 'ABCD', '0xabcd', 'ab:cd' and 'AB CD'; refuse anything else."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "").replace(" ", "")
    if not cleaned or len(cleaned) > 42 or any(c not in "0123456789abcdef" for c in cleaned):
        raise ValueError(f"not a hexadecimal serial number: {text!r}")
    return int(cleaned, 16)


def sqlite_url_for(path: Path) -> str:
    return f"sqlite:///{path}"


def make_engine(url: str, *, sqlite_synchronous: str = "FULL") -> Engine:
    """One engine per process for every package's tables (ca, vendor_trust, ra)."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=4)
    sync = sqlite_synchronous.upper()
    if sync not in ("FULL", "NORMAL", "EXTRA"):
        raise StoreError("sqlite synchronous must be FULL, NORMAL or EXTRA")
    # Pooled per process; Store.after_fork() drops what a parent left behind.
    engine = create_engine(url, connect_args={"timeout": 30})
    if engine.url.database and engine.url.database != ":memory:":
        _gate_writes(engine, os.path.abspath(engine.url.database))

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={sync}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def run_migrations(engine: Engine, script_location: Path, version_table: str) -> None:
    """Upgrade one package's tables to head; each package keeps its own history."""
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["version_table"] = version_table
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except OperationalError as exc:
        raise StoreError(f"cannot open the database: {exc.orig}") from None


# -- units of work -----------------------------------------------------------------
#
# A protocol request touches several stores (nonce, rate counters, credential,
# serial reservation, certificate, decision record, audit chain, CMP
# transaction). Each store method opens its transaction with begin(engine);
# inside unit_of_work(engine) they all share one connection and one
# transaction, so a request costs as many commits as it has durability points
# (commit_point: the serial and TBS before the token signs) instead of one per
# store call, and what a request writes after signing lands together or not
# at all. Outside a unit every store call is its own transaction, as before.


@dataclass
class _Unit:
    engine: Engine
    connection: Connection
    transaction: RootTransaction
    gated: bool = False  # holds the engine's writer gate (SQLite)

    def commit(self) -> None:
        try:
            self.transaction.commit()
        finally:
            self.release_gate()

    def rollback(self) -> None:
        try:
            if self.transaction.is_active:
                self.transaction.rollback()
        finally:
            self.release_gate()

    def release_gate(self) -> None:
        if self.gated:
            self.gated = False
            _GATES[self.engine].release()


class _WriterGate:
    """Writers of an SQLite file queue here, in the kernel, before their first write.

    A unit of work holds SQLite's write lock from its first write to its
    commit. A second worker that wants it meanwhile is put off by SQLite's
    busy handler, which sleeps 1, 2, 5, 10 ms … between tries: under load the
    workers mostly sleep (two workers enrolled no faster than one,
    bench/cmp.py). Taking a file lock first makes the next writer wake the
    moment the lock is free. Writers outside units (the CLI) do not use the
    gate and still wait in SQLite's busy handler, so nothing can deadlock on it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.threads = threading.Lock()  # flock is per open file, not per thread
        self.fd: int | None = None
        self.pid = 0

    def acquire(self) -> None:
        self.threads.acquire()
        try:
            if self.fd is None or self.pid != os.getpid():
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # a fork gets its own
                self.pid = os.getpid()
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            self.threads.release()
            raise

    def release(self) -> None:
        try:
            if self.fd is not None:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            self.threads.release()


_GATES: "weakref.WeakKeyDictionary[Engine, _WriterGate]" = weakref.WeakKeyDictionary()
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLAC")


def _gate_writes(engine: Engine, database_path: str) -> None:
    _GATES[engine] = _WriterGate(database_path + ".writers")

    @event.listens_for(engine, "before_cursor_execute")
    def _before(connection: Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        unit = _UNIT.get()
        if unit is None or unit.gated or unit.connection is not connection:
            return
        if statement.lstrip()[:6].upper() in _WRITES:
            _GATES[engine].acquire()
            unit.gated = True


_UNIT: ContextVar[_Unit | None] = ContextVar("ztpki_unit_of_work", default=None)


def _unit_for(engine: Engine) -> _Unit | None:
    unit = _UNIT.get()
    return unit if unit is not None and unit.engine is engine else None


@contextmanager
def unit_of_work(engine: Engine) -> Iterator[None]:
    """Run the store calls inside as one transaction (nested units join the outer).

    Commits at the end; rolls back if an exception leaves the block (what a
    commit_point inside already made durable stays). A failed commit is a
    StoreError.
    """
    if _UNIT.get() is not None:
        yield
        return
    with engine.connect() as connection:
        unit = _Unit(engine, connection, connection.begin())
        token = _UNIT.set(unit)
        try:
            yield
        except BaseException:
            _UNIT.reset(token)
            unit.rollback()
            raise
        _UNIT.reset(token)
        try:
            unit.commit()
        except SQLAlchemyError as exc:
            raise StoreError(f"the database did not take the request's writes: {exc}") from None


@contextmanager
def begin(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction: the unit's when one is open, else its own.

    Inside a unit, a failed statement is not rolled back on its own on
    PostgreSQL (the whole unit fails), so callers that expect conflicts use
    INSERT ... ON CONFLICT rather than catching IntegrityError.
    """
    unit = _unit_for(engine)
    if unit is not None:
        yield unit.connection
        return
    with engine.begin() as connection:
        yield connection


@contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    """A connection for reading: the unit's (so a request sees its own writes) or a pooled one."""
    unit = _unit_for(engine)
    if unit is not None:
        yield unit.connection
        return
    with engine.connect() as connection:
        yield connection


def commit_point(engine: Engine) -> None:
    """Make what the current unit wrote durable now (e.g. before the token signs)."""
    unit = _unit_for(engine)
    if unit is None:
        return
    try:
        unit.commit()
    except SQLAlchemyError as exc:
        raise StoreError(f"the database did not take the request's writes: {exc}") from None
    unit.transaction = unit.connection.begin()


def in_unit(engine: Engine) -> bool:
    return _unit_for(engine) is not None


def insert_if_absent(connection: Connection, table: Any, values: dict[str, Any]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING (SQLite and PostgreSQL): True if the
    row went in, False if a unique key was taken. Fails no transaction, so it
    is safe inside a unit of work."""
    key = (connection.dialect.name, table.name, tuple(sorted(values)))
    statement = _INSERT_IF_ABSENT.get(key)
    if statement is None:
        from sqlalchemy.dialects import postgresql, sqlite

        dialect_insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
        # RETURNING rather than rowcount: psycopg 3 reports -1 for this INSERT.
        first_column = next(iter(table.primary_key.columns))
        statement = _INSERT_IF_ABSENT[key] = dialect_insert(table).on_conflict_do_nothing().returning(first_column)
    return connection.execute(statement, values).first() is not None


# Built once per (dialect, table, columns): building costs more than running.
_INSERT_IF_ABSENT: dict[tuple[str, str, tuple[str, ...]], Any] = {}


# -- fault injection -------------------------------------------------------------
#
# tests/ca/test_crash.py starts a process with ZTPKI_CRASH_AT=<point> and
# expects it to die at that point between two commits, as under kill -9
# (os._exit: no cleanup, no rollback beyond what the database does itself).
# Read once at import: a production process pays one comparison per point.
CRASH_ENV = "ZTPKI_CRASH_AT"
CRASH_EXIT_CODE = 137
_CRASH_AT = os.environ.get(CRASH_ENV) or None


def crash_point(name: str) -> None:
    """Die here when this process was started to crash at `name`."""
    if _CRASH_AT is not None and _CRASH_AT == name:
        os._exit(CRASH_EXIT_CODE)

"""Bulk import of device records from the production line (flow F3, `ztpki devices import`).

Input: CSV with a header row, or JSON Lines, with the keys serial (required),
vendor, model, mac, imei, hnb_id, tenant, profile and public_key (PEM or
base64 DER SubjectPublicKeyInfo).

Memory stays flat whatever the file size: the file is read as a stream and
good records go, a batch at a time, into a staging table private to this
import's connection (TEMP). The staging table's unique serial is what finds
duplicates within the file, so no set of seen serials grows in memory; bad
rows are the only thing kept, to report them all by line.

* skip-bad: each batch is staged and merged into `devices` in one short
  transaction; the first occurrence of a serial wins, later ones are bad.
* all-or-nothing: the whole file is staged (temporary tables do not take the
  database's write lock), then merged in one transaction if, and only if, no
  row was bad. On SQLite that transaction holds the write lock for a few
  seconds per million records; other writers wait (busy timeout).

Merging is set-based SQL (UPDATE ... FROM, then INSERT ... SELECT ... ON
CONFLICT DO NOTHING) whose row counts say what changed. An empty field keeps
what an existing device had, so a file of only serial and profile re-assigns
profiles without touching anything else; rows equal to what is stored are
not rewritten.

Reading and checking cost ~10 µs a record (~25 with a public key, 8 of them
cryptography loading an EC key), about as much as the database's work.
Reading in a second process was measured slower on a busy two-core machine,
so there is one. SQLite 3.33 or later (UPDATE ... FROM, json_each).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Iterator, Literal, Sequence, TextIO

from sqlalchemy import DateTime, Engine, bindparam, text
from sqlalchemy.engine import Connection

from storage.db import now
from vendor_trust.registry import (
    InvalidField,
    canonical_public_key,
    clean_serial,
    clean_text,
    normalise_mac,
    validate_imei,
)

ImportMode = Literal["all-or-nothing", "skip-bad"]
IMPORT_MODES: tuple[ImportMode, ...] = ("all-or-nothing", "skip-bad")
FIELDS = ("serial", "vendor", "model", "mac", "imei", "hnb_id", "tenant", "profile", "public_key")
BATCH_ROWS = 5000
_SNIFF_BYTES = 4096
_NUMERIC_OK = frozenset({"serial", "imei", "hnb_id"})  # JSON numbers are fine for these


class ImportFileError(Exception):
    """The file as a whole cannot be imported (unreadable, wrong format, bad header)."""


@dataclass(frozen=True)
class ImportReport:
    imported: int  # new devices
    updated: int  # existing devices whose record changed
    unchanged: int  # existing devices left as they were (same data, or update_existing=False)
    bad_rows: list[tuple[int, str]] = field(default_factory=list)  # (line, message), by line
    records: int = 0  # records read, good and bad
    committed: bool = True  # False: all-or-nothing met bad rows and wrote nothing
    format: str = "csv"


Raw = tuple[str | None, ...]  # the FIELDS values as read
Record = tuple[str, str | None, str | None, str | None, str | None, str | None, str | None, str | None, bytes | None]


@dataclass
class _Batch:
    rows: list[tuple[Any, ...]]  # (line, *Record)
    bad: list[tuple[int, str]]
    records: int
    position: int  # bytes of the file read so far


# -- reading ------------------------------------------------------------------------


def _detect_format(path: Path) -> str:
    try:
        with open(path, "rb") as binary:
            head = binary.read(_SNIFF_BYTES)
    except OSError as exc:
        raise ImportFileError(f"cannot read {path}: {exc.strerror}") from None
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if head.startswith(bom):
            raise ImportFileError(f"{path} is {name}; save it as UTF-8")
    if b"\0" in head:
        raise ImportFileError(f"{path} is not a text file (NUL bytes); give UTF-8 CSV or JSON Lines")
    first = head.removeprefix(codecs.BOM_UTF8).lstrip()[:1]
    if not first:
        raise ImportFileError(f"{path} is empty")
    suffix = path.suffix.lower()
    if first == b"[" and suffix != ".csv":
        raise ImportFileError(f"{path} holds a JSON array; give JSON Lines, one object per line")
    if suffix in (".jsonl", ".json", ".ndjson") or (suffix != ".csv" and first == b"{"):
        return "jsonl"
    return "csv"


def _not_utf8(value: str) -> bool:
    # The file is decoded with surrogateescape: undecodable bytes show up as
    # lone surrogates, which cannot be encoded back.
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _csv_records(stream: TextIO, path: Path) -> Iterator[tuple[int, Raw | str]]:
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as exc:
        raise ImportFileError(f"{path}: no header row ({exc or 'empty file'})") from None
    if _not_utf8("".join(header)):
        raise ImportFileError(f"{path}: the header is not UTF-8; save the file as UTF-8")
    columns = [name.strip().lower() for name in header]
    if "serial" not in columns:
        raise ImportFileError(
            f"{path}: the header row has no 'serial' column (found: {', '.join(columns) or 'nothing'})"
        )
    unknown = [name for name in columns if name not in FIELDS]
    if unknown:
        raise ImportFileError(f"{path}: unknown column(s) {', '.join(map(repr, unknown))}; known: {', '.join(FIELDS)}")
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    if repeated:
        raise ImportFileError(f"{path}: column(s) {', '.join(repeated)} appear twice in the header")
    positions = [columns.index(name) if name in columns else None for name in FIELDS]
    width = len(columns)
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, f"unreadable CSV: {exc}"
            start = reader.line_num + 1
            continue
        line, start = start, reader.line_num + 1  # a quoted field may span lines
        if not row:
            continue
        if len(row) != width:
            yield line, f"expected {width} fields as in the header, found {len(row)}"
        elif _not_utf8("".join(row)):
            yield line, "not valid UTF-8; save the file as UTF-8"
        else:
            yield line, tuple(row[p] if p is not None else None for p in positions)


def _as_text(name: str, value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if name in _NUMERIC_OK and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise InvalidField(name, f"expected a string, found {type(value).__name__}")


def _jsonl_records(stream: TextIO) -> Iterator[tuple[int, Raw | str]]:
    for line_no, line in enumerate(stream, 1):
        stripped = line.strip()
        if not stripped:
            continue
        if _not_utf8(stripped):
            yield line_no, "not valid UTF-8; save the file as UTF-8"
            continue
        try:
            record = json.loads(stripped)
        except json.JSONDecodeError as exc:
            yield line_no, f"not JSON: {exc.msg} at column {exc.colno}"
            continue
        if not isinstance(record, dict):
            yield line_no, "not a JSON object"
            continue
        unknown = [key for key in record if key not in FIELDS]
        if unknown:
            yield line_no, f"unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(FIELDS)}"
            continue
        try:
            yield line_no, tuple(_as_text(name, record.get(name)) for name in FIELDS)
        except InvalidField as exc:
            yield line_no, str(exc)


def clean_record(raw: Sequence[str | None]) -> Record:
    """Validate and normalise one record (FIELDS order); raises InvalidField.
    The hot loop of a large import, hence the inline 'field is empty' tests."""
    serial, vendor, model, mac, imei, hnb_id, tenant, profile, public_key = raw
    return (
        clean_serial(serial),
        clean_text("vendor", vendor) if vendor else None,
        clean_text("model", model) if model else None,
        normalise_mac(mac) if mac and not mac.isspace() else None,
        validate_imei(imei) if imei and not imei.isspace() else None,
        clean_text("hnb_id", hnb_id) if hnb_id else None,
        clean_text("tenant", tenant) if tenant else None,
        clean_text("profile", profile) if profile else None,
        canonical_public_key(public_key) if public_key and not public_key.isspace() else None,
    )


def _read_batches(path: Path, kind: str, batch_rows: int = BATCH_ROWS) -> Generator[_Batch, None, None]:
    """Read and check the file: batches of good records with the bad rows met on the way."""
    with open(path, "rb") as binary:
        # newline="" is what the csv module asks for; utf-8-sig drops an Excel BOM.
        stream = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")
        records = _csv_records(stream, path) if kind == "csv" else _jsonl_records(stream)
        batch = _Batch([], [], 0, 0)
        for line, raw in records:
            batch.records += 1
            if isinstance(raw, str):
                batch.bad.append((line, raw))
                continue
            try:
                batch.rows.append((line, *clean_record(raw)))
            except InvalidField as exc:
                batch.bad.append((line, str(exc)))
                continue
            if len(batch.rows) >= batch_rows:
                batch.position = binary.tell()
                yield batch
                batch = _Batch([], [], 0, 0)
        batch.position = binary.tell()
        yield batch


# -- staging and merging ------------------------------------------------------------

_COLUMNS = ", ".join(("line_no",) + FIELDS)
_KEEP = ", ".join(f"{name} = COALESCE(s.{name}, devices.{name})" for name in FIELDS[1:])
_CHANGED = " OR ".join(f"(s.{n} IS NOT NULL AND (devices.{n} IS NULL OR devices.{n} <> s.{n}))" for n in FIELDS[1:])
_UPDATE = f"""UPDATE devices SET {_KEEP}, updated_at = :stamp FROM {{source}} AS s
WHERE s.serial = devices.serial AND s.line_no BETWEEN :lo AND :hi AND ({_CHANGED})"""
# Rows of existing devices were updated just before and conflict now: the row
# count is the new devices. The WHERE clause is also what lets SQLite parse
# ON CONFLICT after a SELECT.
_INSERT = f"""INSERT INTO devices ({", ".join(FIELDS)}, state, created_at, updated_at)
SELECT {", ".join("s." + name for name in FIELDS)}, 'registered', :stamp, :stamp FROM {{source}} AS s
WHERE s.line_no BETWEEN :lo AND :hi ORDER BY s.line_no
ON CONFLICT (serial) DO NOTHING"""
_STAMP = bindparam("stamp", type_=DateTime(timezone=True))
Counts = tuple[int, int, int]  # imported, updated, unchanged
Duplicate = tuple[int, str, int]  # line, serial, line of its first occurrence


def _staging_ddl(name: str, integer: str, text_type: str, blob: str, *, keys: bool) -> str:
    line_no = f"line_no {integer}" + (" PRIMARY KEY" if keys else "")
    serial = f"serial {text_type}" + (" NOT NULL UNIQUE" if keys else "")
    others = ", ".join(f"{n} {text_type}" for n in FIELDS[1:-1])
    return f"CREATE TEMP TABLE {name} ({line_no}, {serial}, {others}, public_key {blob})"


class _Stager:
    """The staging table on one connection (TEMP tables are per connection)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.staged = 0
        self.postgres = conn.dialect.name == "postgresql"
        self._drop()
        with conn.begin():
            if self.postgres:
                conn.exec_driver_sql(_staging_ddl("device_import", "bigint", "text", "bytea", keys=True))
                # COPY lands here first; the rows vanish at each commit.
                conn.exec_driver_sql(
                    _staging_ddl("device_import_batch", "bigint", "text", "bytea", keys=False)
                    + " ON COMMIT DELETE ROWS"
                )
            else:
                conn.exec_driver_sql(_staging_ddl("device_import", "INTEGER", "TEXT", "BLOB", keys=True))

    def _drop(self) -> None:
        with self.conn.begin():
            for table in ("device_import", "device_import_batch"):
                self.conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")

    def _stage_sqlite(self, rows: list[tuple[Any, ...]]) -> list[Duplicate]:
        self.conn.exec_driver_sql(
            f"INSERT INTO device_import ({_COLUMNS}) VALUES ({', '.join('?' * 10)}) ON CONFLICT (serial) DO NOTHING",
            rows,
        )
        # The line that holds each serial now tells which rows were duplicates.
        found = self.conn.exec_driver_sql(
            "SELECT serial, line_no FROM device_import WHERE serial IN (SELECT value FROM json_each(?))",
            (json.dumps([row[1] for row in rows]),),
        )
        first: dict[str, int] = {serial: line for serial, line in found}
        return [(row[0], row[1], first[row[1]]) for row in rows if first[row[1]] != row[0]]

    def _stage_postgres(self, rows: list[tuple[Any, ...]]) -> list[Duplicate]:
        # COPY: several times faster than executemany for thousands of rows.
        driver: Any = self.conn.connection.driver_connection
        with driver.cursor() as cursor:
            with cursor.copy(f"COPY device_import_batch ({_COLUMNS}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cursor.execute(
                f"INSERT INTO device_import ({_COLUMNS}) SELECT {_COLUMNS} FROM device_import_batch "
                "ORDER BY line_no ON CONFLICT (serial) DO NOTHING RETURNING line_no"
            )
            taken = {line for (line,) in cursor.fetchall()}
            repeated = [row for row in rows if row[0] not in taken]
            if not repeated:
                return []
            # Look up only the duplicates, by the unique index: PostgreSQL
            # never analyses temporary tables, and a join of the batch with
            # the growing staging table was planned as a scan of all of it.
            cursor.execute("SELECT serial, line_no FROM device_import WHERE serial = ANY(%s)",
                           ([row[1] for row in repeated],))
            first = dict(cursor.fetchall())
            cursor.execute("DELETE FROM device_import_batch WHERE line_no = ANY(%s)", ([row[0] for row in repeated],))
            return [(row[0], row[1], first[row[1]]) for row in repeated]

    def _merge(self, source: str, lo: int, hi: int, good: int, update_existing: bool, stamp: Any) -> Counts:
        params = {"lo": lo, "hi": hi, "stamp": stamp}
        updated = 0
        if update_existing:
            updated = self.conn.execute(text(_UPDATE.format(source=source)).bindparams(_STAMP), params).rowcount
        imported = self.conn.execute(text(_INSERT.format(source=source)).bindparams(_STAMP), params).rowcount
        return imported, updated, good - imported - updated

    def stage(
        self, rows: list[tuple[Any, ...]], *, merge: bool, update_existing: bool, stamp: Any
    ) -> tuple[list[Duplicate], Counts]:
        """Stage a batch (and merge it, for skip-bad) in one transaction."""
        with self.conn.begin():
            duplicates = self._stage_postgres(rows) if self.postgres else self._stage_sqlite(rows)
            good = len(rows) - len(duplicates)
            self.staged += good
            counts: Counts = (0, 0, 0)
            if merge:
                # PostgreSQL: the small per-batch table, duplicates removed, so
                # that no plan depends on the size of the staging table.
                source = "device_import_batch" if self.postgres else "device_import"
                counts = self._merge(source, rows[0][0], rows[-1][0], good, update_existing, stamp)
        return duplicates, counts

    def merge_all(self, *, update_existing: bool, stamp: Any) -> Counts:
        with self.conn.begin():
            if self.postgres:
                # Temporary tables are never analysed automatically; without
                # statistics the planner may pick a poor join for the merge.
                self.conn.exec_driver_sql("ANALYZE device_import")
            return self._merge("device_import", 0, 2**62, self.staged, update_existing, stamp)

    def close(self) -> None:
        if not self.conn.closed and not self.conn.invalidated:
            self._drop()


# -- importing ------------------------------------------------------------------------


def import_devices(
    engine: Engine,
    path: str | Path,
    *,
    mode: ImportMode = "all-or-nothing",
    update_existing: bool = True,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import a CSV or JSON Lines file of device records; see the module docstring.

    progress(n) is called after each batch with the number of bytes of the
    file read so far (its size at the end).
    """
    if mode not in IMPORT_MODES:
        raise ValueError(f"mode must be one of {', '.join(IMPORT_MODES)}")
    path = Path(path)
    kind = _detect_format(path)
    merge_each = mode == "skip-bad"
    bad: list[tuple[int, str]] = []
    totals: Counts = (0, 0, 0)
    count = 0
    stamp = now()
    batches = _read_batches(path, kind, BATCH_ROWS)
    with contextlib.closing(batches), engine.connect() as conn:
        stager = _Stager(conn)
        try:
            for batch in batches:
                count += batch.records
                bad.extend(batch.bad)
                if batch.rows:
                    duplicates, counts = stager.stage(
                        batch.rows, merge=merge_each, update_existing=update_existing, stamp=stamp
                    )
                    bad.extend((line, f"serial {serial!r} appears already on line {first}")
                               for line, serial, first in duplicates)
                    totals = (totals[0] + counts[0], totals[1] + counts[1], totals[2] + counts[2])
                if progress is not None:
                    progress(batch.position)
            if not merge_each and not bad:
                totals = stager.merge_all(update_existing=update_existing, stamp=stamp)
        finally:
            stager.close()
    bad.sort()
    return ImportReport(
        imported=totals[0], updated=totals[1], unchanged=totals[2], bad_rows=bad,
        records=count, committed=merge_each or not bad, format=kind,
    )

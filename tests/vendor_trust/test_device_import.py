"""`devices import`: CSV and JSON Lines, both modes, every bad row by line,
duplicates, updates, encodings; SQLite and a real PostgreSQL.

Flat memory at a million records is measured by bench/device_import.py; at
test sizes it would prove nothing.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import Engine

from storage.db import make_engine
from vendor_trust import device_import
from vendor_trust.db import migrate
from vendor_trust.device_import import ImportFileError, import_devices
from vendor_trust.registry import DeviceRegistry

IMEI = "490154203237518"
KEY = ec.generate_private_key(ec.SECP256R1()).public_key()
KEY_DER = KEY.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
KEY_PEM = KEY.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
KEY_B64 = base64.b64encode(KEY_DER).decode()


def _engine(url: str) -> Engine:
    engine = make_engine(url, sqlite_synchronous="NORMAL")
    migrate(engine)
    return engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = _engine(f"sqlite:///{tmp_path / 'import.db'}")
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def any_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'import.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_db_url")
    engine = _engine(url)
    yield engine
    engine.dispose()


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def serials(engine: Engine) -> list[str]:
    return [d.serial for d in DeviceRegistry(engine).list()]


GOOD_AND_BAD_CSV = (
    "serial,vendor,model,mac,imei,profile\n"  # line 1
    "SN-1,acme,m1,AA-BB-CC-DD-EE-01,490154203237518,cells\n"  # 2 good
    "SN-2,acme,m1,not-a-mac,,cells\n"  # 3 bad mac
    "SN-3,acme,m1,,490154203237519,cells\n"  # 4 bad IMEI check digit
    ",acme,m1,,,cells\n"  # 5 no serial
    "SN-4,acme,m1\n"  # 6 too few fields
    "\n"  # 7 blank: ignored
    "SN-5,acme,m2,aabb.ccdd.ee05,,\n"  # 8 good
)
EXPECTED_BAD_LINES = [3, 4, 5, 6]


def test_csv_import_stores_normalised_devices(any_engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path, "devices.csv",
                 f"Serial, Vendor ,mac,imei,hnb_id,tenant,profile,public_key\n"
                 f"SN-1,acme,AA-BB-CC-DD-EE-01,{IMEI},hnb-1,op,cells,{KEY_B64}\n"
                 f'SN-2,acme,,,,,,"{KEY_PEM}"\n')
    report = import_devices(any_engine, path)
    assert (report.imported, report.updated, report.unchanged, report.bad_rows) == (2, 0, 0, [])
    assert report.committed and report.records == 2 and report.format == "csv"
    one = DeviceRegistry(any_engine).require("SN-1")
    assert (one.vendor, one.mac, one.imei, one.hnb_id, one.tenant, one.profile) == (
        "acme", "aa:bb:cc:dd:ee:01", IMEI, "hnb-1", "op", "cells")
    assert one.public_key == KEY_DER and one.state == "registered" and one.model is None
    assert DeviceRegistry(any_engine).require("SN-2").public_key == KEY_DER


def test_jsonl_import_accepts_numbers_for_numeric_identifiers(engine: Engine, tmp_path: Path) -> None:
    lines = [
        {"serial": "SN-1", "imei": int(IMEI), "public_key": KEY_PEM},
        {"serial": 42, "vendor": "acme", "mac": None},
    ]
    path = write(tmp_path, "devices.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    report = import_devices(engine, path)
    assert (report.imported, report.bad_rows, report.format) == (2, [], "jsonl")
    assert DeviceRegistry(engine).require("SN-1").imei == IMEI
    assert DeviceRegistry(engine).require("42").vendor == "acme"


def test_jsonl_bad_rows_are_reported_by_line(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path, "devices.jsonl", "\n".join([
        '{"serial": "SN-1"}',
        '{"serial": "SN-2", "colour": "red"}',
        '{"serial": "SN-3"',
        '["SN-4"]',
        '{"serial": "SN-5", "vendor": 7}',
        '{"serial": "SN-6", "imei": true}',
        '{"serial": "SN-1"}',
    ]))
    report = import_devices(engine, path, mode="skip-bad")
    assert report.imported == 1
    assert [line for line, _ in report.bad_rows] == [2, 3, 4, 5, 6, 7]
    messages = dict(report.bad_rows)
    assert "unknown key(s) 'colour'" in messages[2]
    assert messages[3].startswith("not JSON")
    assert messages[4] == "not a JSON object"
    assert messages[5] == "vendor: expected a string, found int"
    assert messages[6] == "imei: expected a string, found bool"
    assert messages[7] == "serial 'SN-1' appears already on line 1"


def test_format_is_detected_from_the_content_when_the_name_does_not_say(engine: Engine, tmp_path: Path) -> None:
    jsonl = write(tmp_path, "export.txt", '{"serial": "J-1"}\n')
    csv_file = write(tmp_path, "export.dat", "serial\nC-1\n")
    assert import_devices(engine, jsonl).format == "jsonl"
    assert import_devices(engine, csv_file).format == "csv"
    assert serials(engine) == ["J-1", "C-1"]


def test_all_or_nothing_imports_none_and_reports_every_bad_row(any_engine: Engine, tmp_path: Path) -> None:
    report = import_devices(any_engine, write(tmp_path, "d.csv", GOOD_AND_BAD_CSV))
    assert not report.committed
    assert (report.imported, report.updated, report.records) == (0, 0, 6)
    assert [line for line, _ in report.bad_rows] == EXPECTED_BAD_LINES
    messages = dict(report.bad_rows)
    assert messages[3].startswith("mac: not a MAC address: 'not-a-mac'")
    assert messages[4] == "imei: check digit of '490154203237519' is wrong (Luhn)"
    assert messages[5] == "serial: missing"
    assert messages[6] == "expected 6 fields as in the header, found 3"
    assert serials(any_engine) == []


def test_skip_bad_imports_the_good_rows_and_reports_the_bad(any_engine: Engine, tmp_path: Path) -> None:
    report = import_devices(any_engine, write(tmp_path, "d.csv", GOOD_AND_BAD_CSV), mode="skip-bad")
    assert report.committed and report.imported == 2
    assert [line for line, _ in report.bad_rows] == EXPECTED_BAD_LINES
    assert serials(any_engine) == ["SN-1", "SN-5"]
    assert DeviceRegistry(any_engine).require("SN-5").mac == "aa:bb:cc:dd:ee:05"


@pytest.mark.parametrize("mode", ["all-or-nothing", "skip-bad"])
def test_duplicate_serials_in_the_file_are_bad_rows_also_across_batches(
    any_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: Any
) -> None:
    monkeypatch.setattr(device_import, "BATCH_ROWS", 2)  # duplicates in the same and in later batches
    path = write(tmp_path, "d.csv", "serial,model\nA,first\nB,b\nA,again\nC,c\nD,d\nB,again\nA,third\n")
    report = import_devices(any_engine, path, mode=mode)
    assert report.bad_rows == [
        (4, "serial 'A' appears already on line 2"),
        (7, "serial 'B' appears already on line 3"),
        (8, "serial 'A' appears already on line 2"),
    ]
    if mode == "skip-bad":
        assert serials(any_engine) == ["A", "B", "C", "D"]
        assert DeviceRegistry(any_engine).require("A").model == "first"
    else:
        assert serials(any_engine) == []


def test_bad_public_keys_are_bad_rows(engine: Engine, tmp_path: Path) -> None:
    truncated = KEY_B64[:-8]
    path = write(tmp_path, "d.csv", f"serial,public_key\nA,{KEY_B64}\nB,{truncated}\nC,not base64!\nD,\n")
    report = import_devices(engine, path, mode="skip-bad")
    assert [line for line, _ in report.bad_rows] == [3, 4]
    assert all(message.startswith("public_key: not a PEM or base64 DER") for _, message in report.bad_rows)
    assert serials(engine) == ["A", "D"]


def test_line_numbers_count_the_lines_of_multi_line_quoted_fields(engine: Engine, tmp_path: Path) -> None:
    pem_lines = KEY_PEM.count("\n") + 1
    path = write(tmp_path, "d.csv", f'serial,public_key,mac\nA,"{KEY_PEM}",\nB,,bad\n')
    report = import_devices(engine, path, mode="skip-bad")
    assert report.bad_rows[0][0] == 2 + pem_lines


def test_existing_devices_are_updated_and_empty_fields_keep_what_they_had(any_engine: Engine, tmp_path: Path) -> None:
    registry = DeviceRegistry(any_engine)
    registry.register("A", vendor="acme", model="m1", mac="aa:bb:cc:dd:ee:01", profile="old")
    registry.register("B", vendor="acme", profile="same")
    registry.block("A", "keyCompromise")
    path = write(tmp_path, "d.csv", "serial,vendor,profile\nA,,new\nB,acme,same\nC,acme,\n")
    report = import_devices(any_engine, path)
    assert (report.imported, report.updated, report.unchanged) == (1, 1, 1)
    a = registry.require("A")
    assert (a.vendor, a.model, a.mac, a.profile) == ("acme", "m1", "aa:bb:cc:dd:ee:01", "new")
    assert a.state == "blocked"  # an import never touches the state


def test_no_update_leaves_existing_devices_alone(any_engine: Engine, tmp_path: Path) -> None:
    DeviceRegistry(any_engine).register("A", profile="old")
    path = write(tmp_path, "d.jsonl", '{"serial": "A", "profile": "new"}\n{"serial": "B"}\n')
    report = import_devices(any_engine, path, mode="skip-bad", update_existing=False)
    assert (report.imported, report.updated, report.unchanged) == (1, 0, 1)
    assert DeviceRegistry(any_engine).require("A").profile == "old"


def test_undecodable_bytes_make_a_bad_row_not_a_traceback(engine: Engine, tmp_path: Path) -> None:
    content = "serial,model\nA,ok\nB,caf\xe9\nC,ok\n".encode("latin-1")
    report = import_devices(engine, write(tmp_path, "d.csv", content), mode="skip-bad")
    assert report.bad_rows == [(3, "not valid UTF-8; save the file as UTF-8")]
    jsonl = '{"serial": "A"}\n{"serial": "caf\xe9"}\n'.encode("latin-1")
    report = import_devices(engine, write(tmp_path, "d.jsonl", jsonl), mode="skip-bad")
    assert report.bad_rows == [(2, "not valid UTF-8; save the file as UTF-8")]


def test_an_excel_bom_is_ignored(engine: Engine, tmp_path: Path) -> None:
    report = import_devices(engine, write(tmp_path, "d.csv", "\ufeffserial,vendor\nA,acme\n".encode("utf-8")))
    assert report.imported == 1


@pytest.mark.parametrize("name, content, message", [
    ("d.csv", "serial,vendor\n".encode("utf-16"), "is UTF-16; save it as UTF-8"),
    ("d.csv", b"", "is empty"),
    ("d.csv", b"  \n\n", "is empty"),
    ("d.csv", b"vendor,model\nacme,m1\n", "has no 'serial' column (found: vendor, model)"),
    ("d.csv", b"SN-1,acme\nSN-2,acme\n", "has no 'serial' column"),
    ("d.csv", b"serial,colour\nA,red\n", "unknown column(s) 'colour'"),
    ("d.csv", b"serial,mac,MAC\nA,,\n", "column(s) mac appear twice"),
    ("d.csv", b"serial,caf\xe9\n", "the header is not UTF-8"),
    ("d.json", b'[{"serial": "A"}]', "holds a JSON array"),
    ("d.bin", b"serial\x00\x01\x02", "not a text file"),
])
def test_a_file_that_cannot_be_imported_is_one_clear_error(
    engine: Engine, tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    with pytest.raises(ImportFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_devices(engine, write(tmp_path, name, content))
    assert serials(engine) == []


def test_a_missing_file_is_one_clear_error(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match="cannot read .*nope.csv: No such file"):
        import_devices(engine, tmp_path / "nope.csv")


def test_progress_reports_bytes_read_up_to_the_file_size(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_import, "BATCH_ROWS", 10)
    path = write(tmp_path, "d.csv", "serial\n" + "".join(f"SN-{i}\n" for i in range(35)))
    seen: list[int] = []
    import_devices(engine, path, progress=seen.append)
    assert len(seen) == 4 and seen == sorted(seen) and seen[-1] == path.stat().st_size


def test_the_staging_table_is_gone_afterwards_even_after_an_error(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(ImportFileError):
        import_devices(engine, write(tmp_path, "d.csv", "vendor\nacme\n"))
    import_devices(engine, write(tmp_path, "e.csv", "serial\nA\n"))
    with engine.connect() as conn:
        names = conn.exec_driver_sql("SELECT name FROM sqlite_temp_master").scalars().all()
    assert names == []

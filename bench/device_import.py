#!/usr/bin/env python3
"""`ztpki devices import` throughput and memory (not part of the test run).

    .venv/bin/python bench/device_import.py [--quick] [--sizes 100000,1000000]
        [--no-postgres] [--modes all-or-nothing,skip-bad]

Generates CSV files of N device records (serial, vendor, model, MAC, IMEI
with a valid check digit, HNB ID, profile), once without and once with a
public key per record (base64 DER SPKI, EC P-256; a pool of 4096 distinct
keys is cycled, since generating a million keys would take longer than the
import: every record's key is still parsed and checked, nothing is cached).

Every import runs in a fresh process into a freshly migrated database, so
its peak RSS (resource.getrusage ru_maxrss) is its own. Flat memory means
the peak is the same for 100k and 1M records. SQLite uses the
instance default synchronous=FULL; PostgreSQL is a throwaway cluster from
tests/pgcluster.py (fsync on, default settings) sharing this machine's cores.

--quick: N = 20,000 only. The machine's load average is printed: other
work on the same cores shows up directly in records/s.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for entry in (str(REPO), str(REPO / "tests")):
    if entry not in sys.path:
        sys.path.insert(0, entry)

GOAL = 50_000  # records/s, the goal
KEY_POOL = 4096


def imei(index: int) -> str:
    from vendor_trust.registry import imei_check_digit

    body = f"35{index:012d}"
    return body + str(imei_check_digit(body))


def generate(path: Path, count: int, with_keys: bool) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    keys: list[str] = []
    if with_keys:
        for _ in range(KEY_POOL):
            der = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
                Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            keys.append(base64.b64encode(der).decode())
    with open(path, "w", newline="") as out:
        out.write("serial,vendor,model,mac,imei,hnb_id,profile" + (",public_key" if with_keys else "") + "\n")
        for i in range(count):
            mac = f"{0x02_00_00_00_00_00 + i:012x}"
            row = (f"SN{i:010d},acme,cell-{i % 7},{':'.join(mac[j:j + 2] for j in range(0, 12, 2))},"
                   f"{imei(i)},hnb-{i},small-cell")
            out.write(row + (f",{keys[i % KEY_POOL]}" if with_keys else "") + "\n")


def child(url: str, path: str, mode: str) -> None:
    """One import in this process; prints a JSON line of figures."""
    from storage.db import make_engine
    from vendor_trust.device_import import import_devices

    engine = make_engine(url)
    with engine.connect():
        pass
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    report = import_devices(engine, path, mode=mode)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    engine.dispose()
    print(json.dumps({
        "seconds": seconds, "imported": report.imported, "bad": len(report.bad_rows),
        "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "baseline_kib": baseline,
    }))


def fresh_database(backend: str, workdir: Path, pg: Any, tag: str) -> str:
    from storage.db import make_engine
    from vendor_trust.db import migrate

    if backend == "sqlite":
        url = f"sqlite:///{workdir / f'{tag}.db'}"
    else:
        url = pg.create_database(tag)
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    return url


def measure(url: str, path: Path, mode: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "--child", url, str(path), mode],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"import failed:\n{result.stderr}")
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--modes", default="all-or-nothing")
    parser.add_argument("--child", nargs=3, metavar=("URL", "FILE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    sizes = [20_000] if args.quick else [int(n) for n in args.sizes.split(",")]
    backends = ["sqlite"] if args.no_postgres else ["sqlite", "postgres"]
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{'backend':<9} {'keys':<5} {'records':>9} {'mode':<15} {'seconds':>8} "
          f"{'records/s':>10} {'peak RSS':>9} {'RSS before':>10}")
    pg = None
    with tempfile.TemporaryDirectory(prefix="ztpki-bench-import-") as tmp:
        workdir = Path(tmp)
        try:
            if "postgres" in backends:
                from pgcluster import PostgresCluster

                pg = PostgresCluster().start()
            run = 0
            for count in sizes:
                for with_keys in (False, True):
                    path = workdir / f"devices-{count}{'-keys' if with_keys else ''}.csv"
                    generate(path, count, with_keys)
                    for backend in backends:
                        for mode in args.modes.split(","):
                            run += 1
                            url = fresh_database(backend, workdir, pg, f"bench{run}")
                            f = measure(url, path, mode)
                            assert f["imported"] == count and f["bad"] == 0, f
                            rate = count / f["seconds"]
                            print(f"{backend:<9} {'yes' if with_keys else 'no':<5} {count:>9,} {mode:<15} "
                                  f"{f['seconds']:>8.1f} {rate:>10,.0f} {f['rss_kib'] / 1024:>6.0f} MB "
                                  f"{f['baseline_kib'] / 1024:>7.0f} MB", flush=True)
                            if backend == "sqlite":
                                for suffix in ("", "-wal", "-shm"):
                                    Path(str(workdir / f"bench{run}.db") + suffix).unlink(missing_ok=True)
                            elif pg is not None:
                                pg.drop_database(f"bench{run}")
                    path.unlink()
        finally:
            if pg is not None:
                pg.stop()
    print(f"# goal: {GOAL:,} records/s with flat memory (peak RSS the same for every N)")


if __name__ == "__main__":
    main()

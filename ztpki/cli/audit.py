"""`ztpki audit list | verify | noise`: the hash-chained audit log and the
noise counts of unauthenticated refusals (flow F6)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import click

from storage.db import format_time
from ra.audit import AuditLog, AuditRecord

from ztpki.cli.admin import GetInstance


def _audit_line(r: AuditRecord) -> str:
    return (
        f"{r.seq:>6} {format_time(r.at)[:19]} {r.actor:<16} {r.protocol:<10} {r.operation:<14} "
        f"{r.device or '-':<16} {r.outcome:<8} {r.reason or '-':<18} {r.serial or '-'}"
    )


def register(main: click.Group, get_instance: GetInstance) -> None:
    @main.group("audit")
    def audit_group() -> None:
        """Read and verify the tamper-evident audit log."""

    @audit_group.command("list")
    @click.option("--json", "as_json", is_flag=True)
    @click.option("--device", help="Only records of this device.")
    @click.option("--limit", type=click.IntRange(min=0))
    @click.option("--after", "after_seq", type=click.IntRange(min=0), default=0, help="Start after this seq.")
    @click.pass_context
    def audit_list(ctx: click.Context, as_json: bool, device: str | None, limit: int | None, after_seq: int) -> None:
        """List audit records in order (streams: any size of log)."""
        log = AuditLog(get_instance(ctx).engine)
        records = log.records(after_seq=after_seq, limit=limit, device=device)
        if as_json:
            # A JSON array written element by element, so memory stays flat.
            click.echo("[", nl=False)
            for index, record in enumerate(records):
                click.echo(("," if index else "") + "\n  " + json.dumps(record.to_json(), sort_keys=True), nl=False)
            click.echo("\n]")
            return
        click.echo(f"{'SEQ':>6} {'TIME (UTC)':<19} {'ACTOR':<16} {'PROTOCOL':<10} {'OPERATION':<14} "
                   f"{'DEVICE':<16} {'OUTCOME':<8} {'REASON':<18} SERIAL")
        count = 0
        for record in records:
            click.echo(_audit_line(record))
            count += 1
        click.echo(f"{count} record(s)", err=True)

    @audit_group.command("verify")
    @click.pass_context
    def audit_verify(ctx: click.Context) -> None:
        """Check the hash chain; exit 1 naming the first bad record."""
        result = AuditLog(get_instance(ctx).engine).verify()
        if not result.ok:
            click.echo(f"audit log damaged at record {result.first_bad_seq}: {result.problem}", err=True)
            ctx.exit(1)
        click.echo(f"audit log intact: {result.checked} records")
        # Kept elsewhere, the head hash also exposes a rewrite of the whole log.
        click.echo(f"head: seq {result.head_seq}, sha256 {result.head_hash}", err=True)


    @audit_group.command("noise")
    @click.option("--json", "as_json", is_flag=True)
    @click.option("--source", help="Only this source address ('*': the sources past the per-interval cap).")
    @click.option("--hours", type=click.IntRange(min=1), help="Only intervals that began in the last N hours.")
    @click.pass_context
    def audit_noise(ctx: click.Context, as_json: bool, source: str | None, hours: int | None) -> None:
        """Refusals nobody authenticated, counted per interval, source, protocol and reason.

        They are not in the hash chain (a flood would fill the disk); each
        closed interval's totals are, as a noise-summary record."""
        noise = get_instance(ctx).audit.noise
        since = noise.interval_of(time.time() - hours * 3600) if hours is not None else None
        rows = noise.rows(since=since, source=source)
        if as_json:
            click.echo(json.dumps([row.to_json() for row in rows], indent=2, sort_keys=True))
            return
        click.echo(f"{'INTERVAL (UTC)':<16} {'SOURCE':<40} {'PROTOCOL':<8} {'REASON':<22} {'COUNT':>9}  LAST SEEN")
        count = 0
        for row in rows:
            start = datetime.fromtimestamp(row.interval_start, timezone.utc).strftime("%Y-%m-%d %H:%M")
            click.echo(f"{start:<16} {row.source:<40} {row.protocol:<8} {row.reason:<22} {row.count:>9}  "
                       f"{format_time(row.last_seen)[:19]}")
            count += 1
        click.echo(f"{count} row(s)", err=True)

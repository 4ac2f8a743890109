"""Background work, off the request path, in one place (issue 18).

`ztpki serve`, on every node, runs one process beside its listeners
(ztpki/http/server.py) that sweeps at start (start-up reconciliation after a crash) and then once
per interval: rows left 'signing' are revoked as possibly issued, CMP
certificates whose certConf never came are revoked (and transactions a dead
worker left open are closed), stale or
due CRLs are re-issued (one CRL per CA per sweep, however many revocations
came before). `ztpki reconcile` runs the same tasks once.

Several workers and nodes sweeping at once is safe without a leader: each
task is a conditional UPDATE that exactly one sweeper wins per row, or an
idempotent CRL re-issue (two sweepers at the same instant make two correct
CRLs, nothing worse). A task that fails is logged and retried next sweep;
it never stops the others or the thread.

Adding a task: append a MaintenanceTask to `tasks_for`.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

from ca.reconcile import DEFAULT_SIGNING_BOUND, reconcile_crls, reconcile_signing
from ztpki.instance import Instance

log = logging.getLogger("ztpki.maintenance")

# With a signing bound no longer than the interval, a row a crash left
# 'signing' is revoked at the latest by the first sweep one interval after
# a restart.
DEFAULT_INTERVAL = timedelta(seconds=60)


@dataclass(frozen=True)
class MaintenanceTask:
    name: str
    run: Callable[[], int]  # how many things it repaired or re-issued


def tasks_for(instance: Instance, *, signing_bound: timedelta = DEFAULT_SIGNING_BOUND) -> list[MaintenanceTask]:
    """The sweep's tasks, in order: revoking first lets the CRL re-issue list the result."""
    return [
        MaintenanceTask("possibly-issued", lambda: len(reconcile_signing(instance.revocations, signing_bound))),
        # RFC 4210 §5.3.18: certificates whose certConf never came are revoked.
        MaintenanceTask("cmp-unconfirmed", lambda: instance.cmp_transactions.expire_unconfirmed()),
        MaintenanceTask("crls", lambda: len(reconcile_crls(instance.revocations))),
    ]


def run_once(tasks: list[MaintenanceTask]) -> dict[str, int | None]:
    """Run every task once; None for one that failed (logged)."""
    results: dict[str, int | None] = {}
    for task in tasks:
        try:
            results[task.name] = task.run()
        except Exception:  # the store or token is down: try again next sweep
            log.exception("maintenance task %s failed", task.name)
            results[task.name] = None
    return results


class MaintenanceRunner:
    def __init__(self, tasks: list[MaintenanceTask], interval: timedelta = DEFAULT_INTERVAL) -> None:
        self.tasks = tasks
        self.interval = interval.total_seconds()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="ztpki-maintenance", daemon=True)

    def start(self) -> "MaintenanceRunner":
        self.thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self.thread.join(timeout)

    def run(self) -> None:
        """Sweep in this thread until stop()."""
        self._loop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            run_once(self.tasks)
            # Spread the nodes' sweeps over the interval (never longer, so
            # the bound above holds) instead of having them all sweep at once.
            self._stop.wait(self.interval * random.uniform(0.5, 1.0))


def run_maintenance(home: Path) -> None:
    """Sweep at start, then every [maintenance] interval_seconds, for ever
    (the process `ztpki serve` starts beside its listeners)."""
    instance = Instance.open(home)
    settings = instance.settings.maintenance
    tasks = tasks_for(instance, signing_bound=timedelta(seconds=settings.signing_bound_seconds))
    runner = MaintenanceRunner(tasks, timedelta(seconds=settings.interval_seconds))
    try:
        runner.run()
    finally:
        instance.close()

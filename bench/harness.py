"""What the benchmarks under bench/ share (issue 12): the throwaway instance,
`ztpki serve` start and stop, the client processes' timed loop and the
parent's run of them, CPU accounting from /proc (the server's process tree,
the other load on the machine), the step timer, and printing.

Not a benchmark itself; bench/cmp.py, bench/est.py and bench/issuance.py
import it (as `harness`: each bench script puts bench/ on sys.path).
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import io
import os
import queue
import socket
import subprocess
import sys
import time
import tomllib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# The `ztpki` script of the interpreter running the bench (its venv may be
# another checkout's, with this tree first on PYTHONPATH); else the repo's venv.
ZTPKI = next((p for p in (Path(sys.executable).parent / "ztpki", REPO / ".venv" / "bin" / "ztpki") if p.exists()),
             REPO / ".venv" / "bin" / "ztpki")

# A run during which other processes kept more than this many cores busy is
# run again (at most --retries times); the least disturbed attempt is kept.
MAX_OTHER_LOAD = 0.3


class BenchError(RuntimeError):
    pass


class BadAnswer(Exception):
    """A server's answer is not what the protocol says it must be."""


def say(text: str = "") -> None:
    print(text, flush=True)


def run(main: Callable[[], int]) -> None:
    """`python bench/X.py`: exit with main()'s code; Ctrl-C ends quietly."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the server and the temporary directory are gone already (finally)
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def revision() -> str:
    """The short commit of the tree, and whether tracked files differ from it."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return f"{commit}{' + uncommitted changes' if dirty else ''}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --------------------------------------------------------------------------
# CPU accounting (/proc)
# --------------------------------------------------------------------------


def busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine so far (all cores, /proc/stat)."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def tree_ticks(root_pid: int | None, deep: bool = False) -> dict[int, int]:
    """utime+stime clock ticks by pid of a process and its children (the
    PostgreSQL postmaster and its backends, gunicorn's arbiter and workers);
    deep: all descendants (with [tls], `ztpki serve` is supervisor → arbiter
    → worker)."""
    if root_pid is None:
        return {}
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                text = stat.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    tree = {root_pid} | {pid for pid, ppid in parents.items() if ppid == root_pid}
    grown = deep
    while grown:
        more = {pid for pid, ppid in parents.items() if ppid in tree and pid not in tree}
        tree |= more
        grown = bool(more)
    return {pid: ticks[pid] for pid in tree if pid in ticks}


class Steps:
    """A tiny profiler: wall time spent in named calls while enabled."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.enabled = False

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.enabled:
                return function(*args, **kwargs)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1

        return timed

    def timed_unit(self, unit: Callable[..., Any], name: str = "unit_commit") -> Callable[..., Any]:
        """unit (a unit-of-work context manager factory) whose commit, the
        exit without an exception, is timed as `name`."""

        @contextlib.contextmanager
        def timed(*args: Any) -> Iterator[None]:
            manager = unit(*args)
            manager.__enter__()
            try:
                yield
            except BaseException:
                if not manager.__exit__(*sys.exc_info()):
                    raise
            else:
                start = time.perf_counter()
                try:
                    manager.__exit__(None, None, None)
                finally:
                    if self.enabled:
                        self.seconds[name] += time.perf_counter() - start
                        self.calls[name] += 1

        return timed


class CallTimer:
    """Times calls (wall and CPU seconds) with the step timers enabled and,
    with cprofile, under cProfile: only these calls are measured, not the
    work around them (building requests, client checks)."""

    def __init__(self, steps: Steps | None = None, cprofile: bool = False) -> None:
        self.steps = steps
        self.profiler: Any = None
        if cprofile:
            import cProfile

            self.profiler = cProfile.Profile()

    def __call__(self, function: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
        if self.steps is not None:
            self.steps.enabled = True
        if self.profiler is not None:
            self.profiler.enable()
        c0, t0 = time.process_time(), time.perf_counter()
        try:
            return function(*args), time.perf_counter() - t0, time.process_time() - c0
        finally:
            if self.profiler is not None:
                self.profiler.disable()
            if self.steps is not None:
                self.steps.enabled = False

    def cprofile_texts(self, top: int = 25) -> dict[str, str]:
        """cprofile_cumulative and cprofile_tottime: the top functions (none without cprofile)."""
        import pstats

        out = {}
        for order in ("cumulative", "tottime") if self.profiler is not None else ():
            text = io.StringIO()
            pstats.Stats(self.profiler, stream=text).strip_dirs().sort_stats(order).print_stats(top)
            out[f"cprofile_{order}"] = text.getvalue()
        return out


def say_cprofile(title: str, profiled: dict[str, Any]) -> None:
    say("")
    say(title)
    say("")
    say(profiled["cprofile_cumulative"])
    say(profiled["cprofile_tottime"])


# --------------------------------------------------------------------------
# The throwaway instance
# --------------------------------------------------------------------------


def open_instance(home: Path, fast_writes: bool = False) -> Any:
    """The instance; fast_writes: SQLite synchronous NORMAL for this process's
    setup writes only (the server keeps what ztpki.toml says)."""
    from ztpki.config import load_settings
    from ztpki.instance import Instance

    settings = load_settings(home)
    if fast_writes and settings.database.startswith("sqlite"):
        settings = dataclasses.replace(settings, sqlite_synchronous="NORMAL")
    return Instance(settings)


def import_devices(instance: Any, workdir: Path, serials: list[str], vendor: str, model: str, profile: str) -> None:
    """The devices, as `ztpki devices import` imports them (a CSV file)."""
    import csv

    from vendor_trust.device_import import import_devices as import_csv

    path = workdir / f"devices-{serials[0]}.csv"
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["serial", "vendor", "model", "profile"])
        for serial in serials:
            writer.writerow([serial, vendor, model, profile])
    try:
        report = import_csv(instance.engine, path)
    finally:
        path.unlink()
    if report.imported != len(serials) or report.bad_rows:
        raise BenchError(f"device import: {report}")


def store_text(settings: Any) -> str:
    return f"store {settings.database.split('://')[0]}" + (
        f" (synchronous {settings.sqlite_synchronous})" if settings.database.startswith("sqlite") else "")


def profile_lint(home: Path, profile: str) -> bool:
    data = tomllib.loads((home / "profiles.toml").read_text(encoding="utf-8"))
    return bool(data["profiles"][profile].get("lint", False))


def set_profile_lint(home: Path, profile: str, lint: bool) -> None:
    import tomli_w

    path = home / "profiles.toml"
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    data["profiles"][profile]["lint"] = lint
    path.write_text(tomli_w.dumps(data), encoding="utf-8")


def lint_modes(names: list[str], configured: bool) -> list[tuple[bool, str]]:
    """(lint, label) for --lint names configured, off, on; each value once."""
    modes: list[tuple[bool, str]] = []
    for name in names:
        value = {"configured": configured, "off": False, "on": True}[name]
        label = f"lint {'on' if value else 'off'}" + (" (as configured)" if name == "configured" else "")
        if value not in [v for v, _ in modes]:
            modes.append((value, label))
    return modes


def say_token_sign(sign: dict[str, Any]) -> None:
    say(f"token: raw KeySigner.sign ({sign['algorithm']}, {sign['message_bytes']} B TBS), 1 process: "
        f"{sign['rate']:,.0f} sig/s, {sign['cpu_us_per_op']:,.0f} µs CPU/sig (other load {sign['other_cores']:.2f} cores)")


# --------------------------------------------------------------------------
# `ztpki serve`
# --------------------------------------------------------------------------


class Server:
    """`ztpki serve --workers W` on a free port of 127.0.0.1, in its own session."""

    def __init__(self, home: Path, workers: int, log: Path) -> None:
        self.home, self.workers, self.log = home, workers, log
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [str(ZTPKI), "--home", str(self.home), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", str(self.workers)]

    def probe(self) -> http.client.HTTPConnection:
        """A connection to GET /health on while waiting for the server."""
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)

    def processes_when_up(self) -> int:
        return self.workers

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us, and we stop it
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError("server died:\n" + self.log.read_text(errors="replace")[-3000:])
            try:
                conn = self.probe()
                conn.request("GET", "/health")
                if conn.getresponse().status == 200 and len(self.children()) >= self.processes_when_up():
                    conn.close()
                    return
                conn.close()
            except OSError:
                pass
            time.sleep(0.2)
        raise BenchError("server did not come up:\n" + self.log.read_text(errors="replace")[-3000:])

    def ticks(self) -> dict[int, int]:
        assert self.process is not None
        return tree_ticks(self.process.pid)

    def children(self) -> list[int]:
        assert self.process is not None
        return [pid for pid in self.ticks() if pid != self.process.pid]

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# --------------------------------------------------------------------------
# Client processes: the timed loop, and the parent's run of them
# --------------------------------------------------------------------------


def timed_loop(op: Any, spec: dict[str, Any], link: Any, built: Any, warm: Any, ready: Any, go: Any,
               after_warmup: Any = lambda: None) -> dict[str, Any]:
    """A client's part of run_clients' protocol: say it is built, warm up with
    op() on the first signal, report ready, run op() from the second signal
    for spec["seconds"] (op() returns False when its pool is used up).
    Returns count, elapsed, cpu, exhausted, and the connections and requests
    `link` made in the timed window; closes `link`."""
    built.put(spec["index"])
    if not warm.wait(timeout=900):
        raise TimeoutError("no warm-up signal")
    warm_until = time.perf_counter() + spec["warmup"]
    while time.perf_counter() < warm_until:
        if not op():
            break
    after_warmup()
    ready.put(spec["index"])
    if not go.wait(timeout=900):
        raise TimeoutError("no start signal")
    opened0, requests0 = link.opened, link.requests
    count = 0
    exhausted = False
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    deadline = t0 + spec["seconds"]
    while True:
        if not op():
            exhausted = True
            break
        count += 1
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    link.close()
    return {
        "count": count, "elapsed": elapsed, "cpu": cpu, "exhausted": exhausted,
        "opened": link.opened - opened0, "requests": link.requests - requests0,
    }


def run_clients(ctx: Any, client: Callable[..., None], server: Server, mode: str, clients: int, seconds: float,
                warmup: float, credentials: list[Any] | None = None) -> dict[str, Any]:
    """`clients` processes of client(spec, built, warm, ready, go, results)
    (which runs timed_loop) against server, started together; their rates
    summed, CPU per operation of the server tree and of the clients, the
    cores other processes kept busy meanwhile."""
    built, ready, results = ctx.Queue(), ctx.Queue(), ctx.Queue()
    warm, go = ctx.Event(), ctx.Event()
    processes = []
    for index in range(clients):
        spec = {"index": index, "host": "127.0.0.1", "port": server.port, "mode": mode, "seconds": seconds,
                "warmup": warmup, "credentials": credentials[index] if credentials else []}
        process = ctx.Process(target=client, args=(spec, built, warm, ready, go, results), daemon=True)
        process.start()
        processes.append(process)
    completed = False
    try:
        for _ in range(clients):
            built.get(timeout=600)
        warm.set()
        for _ in range(clients):
            ready.get(timeout=600)
        ticks_before = server.ticks()
        busy_before, wall_before, own_before = busy_seconds(), time.perf_counter(), time.process_time()
        go.set()
        collected = [results.get(timeout=seconds + 600) for _ in range(clients)]
        busy = busy_seconds() - busy_before
        wall = time.perf_counter() - wall_before
        own = time.process_time() - own_before
        ticks_after = server.ticks()
        completed = True
    except queue.Empty:
        raise BenchError(f"clients did not report in time ({mode}, {clients} clients)") from None
    finally:
        if not completed:  # Ctrl-C, SIGTERM or a failure: stop the clients now
            for process in processes:
                if process.is_alive():
                    process.terminate()
        warm.set()
        go.set()
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
    failures = [r["error"] for r in collected if "error" in r]
    if failures:
        raise BenchError("a client failed:\n" + failures[0])
    hz = os.sysconf("SC_CLK_TCK")
    server_cpu = sum(t - ticks_before.get(pid, 0) for pid, t in ticks_after.items()) / hz
    client_cpu = sum(r["cpu"] for r in collected)
    count = sum(r["count"] for r in collected)
    errors: Counter[str] = Counter()
    for r in collected:
        errors.update(r["errors"])
    return {
        "mode": mode, "clients": clients,
        "rate": sum(r["count"] / r["elapsed"] for r in collected),
        "count": count,
        "server_us": 1e6 * server_cpu / max(count, 1),
        "client_us": 1e6 * client_cpu / max(count, 1),
        "build_us": 1e6 * sum(r["build_cpu"] for r in collected) / max(sum(r["built"] for r in collected), 1),
        "server_cores": server_cpu / wall, "client_cores": client_cpu / wall,
        "other_cores": max(0.0, (busy - server_cpu - client_cpu - own) / wall),
        "errors": dict(errors), "samples": [s for r in collected for s in r["samples"]][:3],
        "exhausted": sum(1 for r in collected if r["exhausted"]),
        "opened": sum(r["opened"] for r in collected), "requests": sum(r["requests"] for r in collected),
        "verified": all(r["verified"] for r in collected) if mode in ("cmp", "basic", "tls") else None,
    }


class ClientErrors:
    """A client's errors by kind, and the first few as samples."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.samples: list[str] = []

    def __call__(self, kind: str, text: str = "") -> None:
        self.counts[kind] += 1
        if len(self.samples) < 3:
            self.samples.append(f"{kind}: {text}"[:200])


def describe(result: dict[str, Any], unit: str, links: str = "connections") -> str:
    """One line of a run_clients result; errors whose kind starts with
    "(info)" are figures, not errors, and are listed after the count."""
    errors = {k: v for k, v in result["errors"].items() if not k.startswith("(info)")}
    text = (f"{result['rate']:8,.1f} {unit}  server {result['server_us']:7,.0f} µs CPU/op "
            f"({result['server_cores']:.2f} cores)  clients {result['client_us']:5,.0f} µs CPU/op "
            f"({result['client_cores']:.2f} cores)  other load {result['other_cores']:.2f} cores  "
            f"{links} {result['opened']:,} for {result['requests']:,} requests  errors {sum(errors.values())}")
    info = {k: v for k, v in result["errors"].items() if k.startswith("(info)")}
    if info:
        text += "  " + ", ".join(f"{k[7:]} {v}" for k, v in info.items())
    if result["other_cores"] > MAX_OTHER_LOAD:
        text += " ⚠"
    if result["exhausted"]:
        text += f"  ⚠ {result['exhausted']} client(s) ran out of pre-built requests"
    return text

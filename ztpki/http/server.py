"""`ztpki serve`: gunicorn, pre-forking, the app built in each worker after fork
(the PKCS#11 session and database connections must not cross a fork). The
workers are gevent workers with every client's time bounded (ztpki/worker.py
says why), so idle or slow clients cannot take them all.

Without [tls] one gunicorn arbiter serves plain HTTP in this process, as it
always did. With [tls] there are two listeners, and gunicorn's TLS settings
apply to every address an arbiter binds, so each gets its own arbiter:

    ztpki serve (supervisor)
      ├─ arbiter "ztpki"        plain HTTP on [serve] port: OCSP, CRLs, CA
      │    └─ workers           certificates, CMP; EST behind a trusted proxy
      └─ arbiter "ztpki-https"  TLS on [tls] port, client certificate optional
           └─ workers

The supervisor forwards SIGTERM, SIGINT, SIGQUIT and SIGHUP to both
arbiters (SIGHUP also rewrites the client CA bundle first), and when one
arbiter ends it stops the other and exits with the first non-zero status.
Each arbiter gets SIGTERM if the supervisor itself dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import ssl
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any, Callable

from gunicorn.app.base import BaseApplication

from ztpki.http.app import create_app
from ztpki.instance import Instance
from ztpki.config import ConfigError, TlsSettings, load_settings
from ztpki.maintenance import run_maintenance
from ztpki.http.tls import gunicorn_ssl_context, refresh_client_ca
from ztpki.http.transport import make_transport
from ztpki.http.worker import handshake_in_handler

log = logging.getLogger("ztpki.server")

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)
PR_SET_PDEATHSIG = 1
STOP_WAIT_SECONDS = 30.0


class ZtpkiServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, home: Path, options: dict[str, Any]) -> None:
        self.home = home
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        # Without preload_app gunicorn calls this in each worker, after fork.
        instance = Instance.open(self.home)
        return create_app(instance, est_transport=make_transport(instance.settings.est))


def _options(host: str, port: int, workers: int, limits: Limits, access_log: bool, name: str) -> dict[str, Any]:
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "ztpki.http.worker.ZtpkiWorker",
        "worker_connections": limits.max_connections,
        # gevent worker: the bound on waiting for a request's headers, and on
        # each socket read or write (ztpki/worker.py).
        "keepalive": limits.client_timeout,
        "accesslog": "-" if access_log else None,
        "access_log_format": '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(p)s',  # + <worker pid>
        "errorlog": "-",
        "loglevel": "warning",
        "timeout": 60,
        "graceful_timeout": 5,
        "proc_name": name,
    }


def _tls_options(home: Path, tls: TlsSettings) -> dict[str, Any]:
    # certfile/keyfile make gunicorn wrap accepted sockets; the context itself
    # comes from ztpki/tls.py (TLS 1.2+, optional verified client certificate).
    return {
        "certfile": str(tls.certificate_path(home)),
        "keyfile": str(tls.key_path(home)),
        "ca_certs": str(tls.client_ca_path(home)),
        "cert_reqs": ssl.CERT_OPTIONAL,
        "ssl_context": handshake_in_handler(gunicorn_ssl_context(home, tls)),
    }


@dataclass(frozen=True)
class Limits:
    client_timeout: int
    max_connections: int


def serve(home: Path, *, host: str, port: int, workers: int,
          access_log: bool = False, tls_port: int | None = None,
          on_ready: Callable[[], None] | None = None) -> int:
    """Run until stopped; the exit status. on_ready is called once every
    listener accepts connections."""
    settings = load_settings(home)
    limits = Limits(settings.client_timeout, settings.max_connections)
    tls = settings.tls
    if tls is not None and tls_port is not None:
        tls = replace(tls, port=tls_port)
    plain = _options(host, port, workers, limits, access_log, "ztpki")
    if tls is not None and tls.port == port:
        raise ConfigError(f"the HTTPS port {port} is the plain HTTP port too; give [tls] port another")
    # Background work (issue 18: reconciliation, the CMP confirm-wait sweep,
    # CRLs) runs in a process of its own, not in a worker: a gevent worker
    # would stall every connection while a sweep holds its event loop.
    keeper = _start_maintenance(settings.home)
    try:
        if tls is None:
            if on_ready is not None:
                plain["when_ready"] = lambda _arbiter: on_ready()
            ZtpkiServer(settings.home, plain).run()
            return 0
        tls.check_files(settings.home)
        refresh_client_ca(replace(settings, tls=tls))
        secure = {**_options(host, tls.port, workers, limits, access_log, "ztpki-https"), **_tls_options(settings.home, tls)}
        return _Supervisor(settings.home, [plain, secure], lambda: refresh_client_ca(replace(settings, tls=tls))).run(on_ready)
    finally:
        _stop_maintenance(keeper)


def _die_with(parent: int) -> None:
    """Get SIGTERM when `parent` dies (PR_SET_PDEATHSIG), or exit if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: a dead supervisor leaves us running
        pass
    if os.getppid() != parent:  # it died before prctl took effect
        sys.exit(1)


def _run_arbiter(home: Path, options: dict[str, Any], parent: int) -> None:
    _die_with(parent)
    ZtpkiServer(home, options).run()


def _run_maintenance(home: Path, parent: int) -> None:
    _die_with(parent)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_IGN)  # the terminal's ^C reaches the whole group; serve stops us
    run_maintenance(home)


def _start_maintenance(home: Path) -> int:
    # A bare fork, not multiprocessing: gunicorn forks its workers from this
    # process, and multiprocessing's exit handler in each worker would
    # terminate a "daemon child" it inherited when the worker exits.
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _run_maintenance(home, parent)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 0
        except BaseException:
            log.exception("the maintenance process failed")
            code = 1
        finally:
            os._exit(code)  # never the parent's atexit handlers
    return pid


def _stop_maintenance(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


class _Supervisor:
    def __init__(self, home: Path, listeners: list[dict[str, Any]], on_reload: Callable[[], Any]) -> None:
        self.home = home
        self.listeners = listeners
        self.on_reload = on_reload
        self.context = multiprocessing.get_context("fork")
        self.pending: list[int] = []

    def _queue(self, signum: int, _frame: FrameType | None) -> None:
        self.pending.append(signum)

    def run(self, on_ready: Callable[[], None] | None) -> int:
        ready = []
        processes = []
        for options in self.listeners:
            event = self.context.Event()
            ready.append(event)
            with_hook = {**options, "when_ready": _setter(event)}
            processes.append(self.context.Process(
                target=_run_arbiter, args=(self.home, with_hook, os.getpid()), name=options["proc_name"],
            ))
        previous = {signum: signal.signal(signum, self._queue) for signum in FORWARDED_SIGNALS}
        try:
            for process in processes:
                process.start()
            return self._watch(processes, ready, on_ready)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _watch(self, processes: list[Any], ready: list[Any], on_ready: Callable[[], None] | None) -> int:
        announced = False
        stopping = False
        while all(p.exitcode is None for p in processes):
            multiprocessing.connection.wait([p.sentinel for p in processes], timeout=0.1)
            while self.pending:
                signum = self.pending.pop(0)
                if signum == signal.SIGHUP:
                    self._reload()
                else:
                    stopping = True
                for process in processes:
                    if process.exitcode is None and process.pid is not None:
                        os.kill(process.pid, signum)
            if not announced and all(e.is_set() for e in ready):
                announced = True
                if on_ready is not None:
                    on_ready()
        # One arbiter ended: stop the rest.
        for process in processes:
            if process.exitcode is None and process.pid is not None:
                if not stopping:
                    log.error("ztpki serve: %s ended, stopping the other listener", _ended(processes))
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join(STOP_WAIT_SECONDS)
            if process.exitcode is None:
                process.kill()
                process.join()
        codes = [p.exitcode for p in processes]
        return next((code for code in codes if code), 0)

    def _reload(self) -> None:
        try:
            self.on_reload()
        except Exception:  # keep serving with the old bundle
            log.exception("SIGHUP: the TLS client CA bundle could not be rewritten")


def _setter(event: Any) -> Callable[[Any], None]:
    """gunicorn's when_ready hook (one argument, the arbiter): set `event`."""

    def when_ready(_arbiter: Any) -> None:
        event.set()

    return when_ready


def _ended(processes: list[Any]) -> str:
    return ", ".join(f"{p.name} (exit {p.exitcode})" for p in processes if p.exitcode is not None)

"""`ztpki serve`: gunicorn, pre-forking, the app built in each worker after fork
(the PKCS#11 session and database connections must not cross a fork)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from ztpki.app import create_app
from ztpki.assembly import Instance


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
        return create_app(Instance.open(self.home))


def serve(home: Path, *, host: str, port: int, workers: int, threads: int = 1,
          access_log: bool = False, on_ready: Any = None) -> None:
    options: dict[str, Any] = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread" if threads > 1 else "sync",
        "accesslog": "-" if access_log else None,
        "access_log_format": '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(p)s',  # + <worker pid>
        "errorlog": "-",
        "loglevel": "warning",
        "timeout": 60,
        "graceful_timeout": 5,
        "proc_name": "ztpki",
    }
    if on_ready is not None:
        options["when_ready"] = on_ready
    ZtpkiServer(home, options).run()

"""A real nginx (Debian's 1.22) in front of `ztpki serve`, for the conformance
tests: TLS terminated by nginx, the client certificate asked for but not
verified (`ssl_verify_client optional_no_ca`: every certificate reaches ztpki,
which judges it), and passed on to ztpki's plain HTTP port in the
X-SSL-Client-Cert header ($ssl_client_escaped_cert, URL-escaped PEM).

nginx has no variable with the client's intermediates, so behind it a device
certificate must be issued directly by a vendor anchor (or the intermediate
be an anchor itself). X-SSL-Client-Chain is cleared so a client cannot add
certificates of its own through the proxy.

Everything lives in a temporary directory: the configuration, the pid file,
logs and nginx's temp paths. As root the workers run as root too (`user
root;`): the test directories are 0700.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftools import free_port

NGINX = "/usr/sbin/nginx"

CONFIG = """\
{user}worker_processes 1;
error_log {dir}/error.log info;

events {{
    worker_connections 64;
}}

http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {certificate};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_verify_client optional_no_ca;

        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_set_header Host $host;
            proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert;
            proxy_set_header X-SSL-Client-Chain "";
        }}
    }}
}}
"""


class Nginx:
    """nginx listening on 127.0.0.1:port with TLS, proxying to upstream."""

    def __init__(self, directory: Path, certificate: Path, key: Path, upstream: int) -> None:
        self.directory = directory
        self.certificate = certificate
        self.key = key
        self.upstream = upstream
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def log(self) -> str:
        parts = []
        for name in ("nginx.out", "error.log"):
            try:
                parts.append(f"--- {name} ---\n" + (self.directory / name).read_text(errors="replace"))
            except OSError:
                pass
        return "\n".join(parts) or "(no nginx log)"

    def start(self, timeout: float = 15) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            self.port = free_port()
            conf = self.directory / "nginx.conf"
            conf.write_text(CONFIG.format(
                user="user root;\n" if os.geteuid() == 0 else "",
                dir=self.directory, port=self.port, certificate=self.certificate, key=self.key,
                upstream=self.upstream,
            ))
            with (self.directory / "nginx.out").open("wb") as out:
                self.proc = subprocess.Popen(
                    [NGINX, "-p", str(self.directory), "-e", str(self.directory / "error.log"), "-c", str(conf),
                     "-g", f"daemon off; pid {self.directory}/nginx.pid;"],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                )
            if self._wait(timeout):
                return
            if "Address already in use" not in self.log() or attempt == 2:
                break
        self.stop()
        pytest.fail(f"nginx did not start; its logs:\n{self.log()}", pytrace=False)

    def _wait(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # fast shutdown of the master and its worker
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

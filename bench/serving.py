"""Serving-layer candidates for `ztpki serve` (security issue 10 finding 5,
and the performance issue beside it), on a trivial Flask app (GET /health):

    .venv/bin/python bench/serving.py [--seconds 5] [--idle 200]

For each candidate, 2 worker processes on 127.0.0.1:
- rate: wrk -t2 -c16 (keep-alive connections) requests/s;
- keep-alive: does a second request travel on the first one's connection;
- slow clients: with --idle silent TCP connections and 10 sending a request
  a byte every half second, how long GET /health takes (blocked: > 5 s).

What each can hand EST over its own TLS (the verified client chain and
tls-unique) is not measured here; bench/README.md "Serving layer" says it,
from the servers' code. Everything stops by itself; loopback only.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# bench/harness.py; bench/ is sys.path[0] when run as a script.
from harness import free_port

BIN = Path(sys.executable).parent
APP = '''from flask import Flask
app = Flask(__name__)
@app.get("/health")
def health():
    return "ok\\n", 200, {"Content-Type": "text/plain"}
'''


def candidates(port: int) -> dict[str, list[str]]:
    gunicorn = [str(BIN / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{port}", "--log-level", "error"]
    return {
        "gunicorn sync": gunicorn + ["trivial:app"],
        "gunicorn gthread (4 threads)": gunicorn + ["--threads", "4", "trivial:app"],
        "gunicorn gevent": gunicorn + ["-k", "gevent", "trivial:app"],
        "gunicorn ztpki.http.worker (gevent, bounded)": gunicorn + ["-k", "ztpki.http.worker.ZtpkiWorker", "--keep-alive", "10", "trivial:app"],
        "granian WSGI": [str(BIN / "granian"), "--interface", "wsgi", "--workers", "2", "--host", "127.0.0.1",
                         "--port", str(port), "--log-level", "error", "trivial:app"],
    }


def wait_up(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            health(port, 2)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing answers on {port}")


def health(port: int, timeout: float) -> float:
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    connection.request("GET", "/health")
    assert connection.getresponse().read() == b"ok\n"
    connection.close()
    return time.monotonic() - started


def rate(port: int, seconds: int) -> str:
    out = subprocess.run(["wrk", "-t2", "-c16", f"-d{seconds}s", f"http://127.0.0.1:{port}/health"],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return f"{float(found[1]):,.0f}" if found else "?"


def keeps_alive(port: int) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", "/health")
    first = connection.getresponse()
    first.read()
    sock = connection.sock
    if first.getheader("Connection", "").lower() == "close" or sock is None:
        return "no"
    connection.request("GET", "/health")
    connection.getresponse().read()
    return "yes" if connection.sock is sock else "no"


def under_slow_clients(port: int, idle: int) -> str:
    silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(idle)]
    slow = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(10)]
    stop = threading.Event()
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"p" * 200

    def trickle() -> None:
        for i in range(len(request)):
            if stop.wait(0.5):
                return
            for sock in slow:
                try:
                    sock.send(request[i:i + 1])
                except OSError:
                    pass

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)
        return f"{health(port, 5) * 1000:.0f} ms"
    except OSError:
        return "blocked (> 5 s)"
    finally:
        stop.set()
        thread.join()
        for sock in silent + slow:
            sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--idle", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ztpki-serving-"))
    (work / "trivial.py").write_text(APP)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(work), str(Path(__file__).resolve().parents[1])])}
    print(f"| candidate (2 workers) | wrk -t2 -c16 -d{args.seconds}s req/s | keep-alive | GET /health with {args.idle} idle + 10 slow |")
    print("|---|---|---|---|")
    try:
        for name, command in candidates(free_port()).items():
            port = int(command[command.index("-b") + 1].rsplit(":", 1)[1]) if "-b" in command else \
                int(command[command.index("--port") + 1])
            if not Path(command[0]).exists():
                print(f"| {name} | not installed | | |")
                continue
            proc = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_up(port)
                measured = (rate(port, args.seconds), keeps_alive(port), under_slow_clients(port, args.idle))
                print(f"| {name} | {' | '.join(measured)} |", flush=True)
            finally:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            time.sleep(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

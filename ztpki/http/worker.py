"""The gunicorn worker class of `ztpki serve`: gunicorn's gevent worker, with
every client's time bounded and gunicorn's own error replies in text/plain.

Why gevent (bench/README.md, "Serving layer" has the measurements): devices
reach ztpki over the internet, and a sync worker is one connection at a time,
so a handful of idle TCP connections (no request, no TLS ClientHello) took
every worker of both ports (security issue 10, finding 5). gthread hands a new
connection to a thread that waits up to five seconds for its first byte and
then reads the TLS handshake and the headers blocking, so a client that sends
one byte still holds a thread. With gevent each connection is a greenlet
waiting in the event loop; the handshake and the request are read there too.
Unlike granian or uvicorn, the TLS socket stays Python's own ssl socket, so EST
still gets the verified client chain and tls-unique (ztpki/transport.py).
The cost: a PKCS#11 signature or an SQLite statement holds the loop while it
runs (milliseconds), as it held a sync worker.

Bounds, from [serve] in ztpki.toml (gunicorn settings set by ztpki/server.py):

* client_timeout (gunicorn `keepalive`): the whole wait for a request's
  headers, and the idle time between requests of a kept-alive connection
  (gunicorn's gevent.Timeout) and for the TLS handshake (here); and each
  socket read or write (the socket timeout set here).
* max_connections (gunicorn `worker_connections`): connections per worker;
  beyond them new connections wait in the listen backlog.
"""

from __future__ import annotations

import ctypes
import ssl
from typing import Any, Callable, Iterable

import gevent
import greenlet
from gunicorn import util
from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker


def write_plain_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's refusal of a request it could not parse (400, 414, 431, ...)
    in the form of ztpki's own errors. The detail (`mesg`, which echoes what
    the client sent) stays in gunicorn's log."""
    body = f"{status_int} {reason}\n".encode("latin-1", "replace")
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1", "replace")
    util.write_nonblock(sock, head + body)


def _load_err_clear_error() -> Callable[[], None]:
    import _ssl

    try:
        # dlsym on _ssl's own handle finds the libcrypto that _ssl links.
        clear: Callable[[], None] = ctypes.CDLL(_ssl.__file__).ERR_clear_error
    except (OSError, AttributeError):  # a static or unusual build: nothing to clear
        return lambda: None
    return clear


class _ClearsOpensslErrors:
    """The WSGI app, leaving OpenSSL's error queue empty when it returns.

    SoftHSM2 shares the process's libcrypto with Python's ssl and leaves
    errors in the thread's queue (ENGINE lookups at C_Initialize and C_Sign).
    Python's ssl (3.11) does not clear the queue before SSL_read, and
    OpenSSL's SSL_get_error answers SSL_ERROR_SSL whenever the queue is not
    empty; on gevent's non-blocking sockets, where a read that would block is
    an error code, another client's TLS read then fails with the stale error
    ("[ENGINE: NO_SUCH_ENGINE] no such engine"). Sync workers never met this:
    their blocking reads return data, not an error code."""

    def __init__(self, app: Callable[..., Iterable[bytes]], clear: Callable[[], None]) -> None:
        self.app = app
        self.clear = clear

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            return self.app(environ, start_response)
        finally:
            self.clear()


def handshake_in_handler(hook: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """Wrap gunicorn's `ssl_context` hook so that gevent's server wraps the
    accepted socket without the TLS handshake: ZtpkiWorker.handle does it,
    under a deadline, and turns its failures into one log line instead of
    gevent's traceback per connection."""

    def wrapped(config: Any, default_factory: Any) -> _DeferredHandshake:
        return _DeferredHandshake(hook(config, default_factory))

    return wrapped


class _DeferredHandshake:
    """The SSLContext as gevent's StreamServer uses it: wrap_socket only."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context

    def wrap_socket(self, sock: Any, **kwargs: Any) -> ssl.SSLSocket:
        kwargs["do_handshake_on_connect"] = False
        return self.context.wrap_socket(sock, **kwargs)


class ZtpkiWorker(GeventWorker):  # type: ignore[misc]
    wsgi: Any  # set by gunicorn's Worker.load_wsgi

    def init_process(self) -> None:
        # gunicorn has no setting for its error page; write_error is its one
        # writer (workers/base.py handle_error), called in this process only.
        util.write_error = write_plain_error
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()  # builds the app: opens the token
        clear = _load_err_clear_error()
        clear()
        self.wsgi = _ClearsOpensslErrors(self.wsgi, clear)
        # Whatever else runs in this process (a background greenlet signing a
        # CRL) may leave errors too: empty the queue whenever greenlets switch.
        # Safe because Python reads an OpenSSL error right after the failing
        # call, before any switch.
        greenlet.settrace(lambda event, _args: clear() if event in ("switch", "throw") else None)

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        # GeventWorker.handle would make the socket blocking without timeout:
        # keep the bound for the body reads and the response writes.
        client.settimeout(self.cfg.keepalive)
        if isinstance(client, ssl.SSLSocket) and not self._handshake(client, addr):
            util.close(client)
            return
        AsyncWorker.handle(self, listener, client, addr)

    def _handshake(self, client: ssl.SSLSocket, addr: Any) -> bool:
        # The deadline bounds a ClientHello sent a byte at a time, which the
        # socket timeout alone (per read) would not.
        try:
            with gevent.Timeout(self.cfg.keepalive):
                client.do_handshake()
            return True
        except ssl.SSLError as exc:  # e.g. a client certificate outside the client CA bundle
            self.log.warning("TLS handshake with %s failed: %s", _peer(addr), exc.reason or exc)
        except (OSError, gevent.Timeout) as exc:  # silent, reset or too slow: the client's loss
            self.log.debug("TLS handshake with %s abandoned: %r", _peer(addr), exc)
        return False


def _peer(addr: Any) -> str:
    return str(addr[0]) if isinstance(addr, tuple) and addr else str(addr)

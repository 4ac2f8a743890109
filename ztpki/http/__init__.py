"""The serving layer: the WSGI app (app.py), one wiring module per protocol
(cmp.py, est.py), gunicorn with its bounded gevent worker (server.py,
worker.py), TLS contexts (tls.py) and the transport facts EST reads (transport.py)."""

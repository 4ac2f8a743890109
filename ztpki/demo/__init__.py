"""`ztpki demo`: a demo instance in DIR, demo.json for scripts, and the server.

run.py prepares the instance and serves it; one module per protocol (cmp.py,
est.py) sets up what that protocol's clients need and prints how to try it;
vendor.py is the simulated vendor PKI, files.py the key and demo.json files
they share. Running it again on the same DIR reuses all of it.
"""

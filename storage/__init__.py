"""Database plumbing shared by the three store packages (ca, ra, vendor_trust):
the engine (SQLite file lock, PostgreSQL), Alembic migrations per package
(each keeps its own migrations/ and version table), store errors, units of
work and crash points. It imports nothing of ztpki's own; every floor may
import it.
"""

"""Shared fixtures.  The PostgreSQL machinery itself is in pgcluster.py.

postgres_cluster  (session)   the running PostgresCluster of this process
postgres_url      (session)   SQLAlchemy URL of the database ``ztpki_test``
make_postgres_db  (function)  factory: make_postgres_db() -> URL of a new database
postgres_db_url   (function)  URL of a fresh database of its own, dropped afterwards

Under pytest-xdist each worker starts its own cluster.  Missing PostgreSQL
binaries make these fixtures fail; ZTPKI_SKIP_POSTGRES=1 turns that into a skip.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from pgcluster import PostgresCluster, cluster_or_skip

POSTGRES_FIXTURES = {"postgres_cluster", "postgres_url", "make_postgres_db", "postgres_db_url"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests using the cluster get the `postgres` marker (-m 'not postgres').
    for item in items:
        if POSTGRES_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    yield from cluster_or_skip()


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    return postgres_cluster.create_database("ztpki_test")


@pytest.fixture
def make_postgres_db(postgres_cluster: PostgresCluster) -> Iterator[Callable[[], str]]:
    created: list[str] = []

    def make() -> str:
        name = f"ztpki_t_{uuid.uuid4().hex[:16]}"
        url = postgres_cluster.create_database(name)
        created.append(name)
        return url

    yield make
    for name in created:
        postgres_cluster.drop_database(name)


@pytest.fixture
def postgres_db_url(make_postgres_db: Callable[[], str]) -> str:
    return make_postgres_db()

"""[serve] in ztpki.toml: the per-client bounds of `ztpki serve`
(client_timeout, max_connections) are read, written back and bounded, and
reach gunicorn's settings for the gevent worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztpki.config import CONFIG_NAME, ConfigError, load_settings
from ztpki.http.server import Limits, _options


def _home(tmp_path: Path, serve_table: str) -> Path:
    (tmp_path / CONFIG_NAME).write_text(
        '[instance]\nbase_url = "http://127.0.0.1:8080"\n' + serve_table, encoding="utf-8"
    )
    return tmp_path


def test_defaults_are_bounded_and_written_back(tmp_path: Path) -> None:
    settings = load_settings(_home(tmp_path, ""))
    assert (settings.client_timeout, settings.max_connections) == (10, 1000)
    text = settings.to_toml()
    assert "client_timeout = 10" in text and "max_connections = 1000" in text


def test_configured_values_reach_gunicorn(tmp_path: Path) -> None:
    settings = load_settings(_home(tmp_path, "[serve]\nclient_timeout = 4\nmax_connections = 50\n"))
    options = _options("127.0.0.1", 8080, 2, Limits(settings.client_timeout, settings.max_connections), False, "ztpki")
    assert options["keepalive"] == 4 and options["worker_connections"] == 50
    assert options["worker_class"] == "ztpki.http.worker.ZtpkiWorker"


@pytest.mark.parametrize("table, message", [
    ("[serve]\nclient_timeout = 0\n", "client_timeout must be from 1 to 120"),
    ("[serve]\nclient_timeout = 3600\n", "client_timeout must be from 1 to 120"),
    ("[serve]\nmax_connections = 1\n", "max_connections must be from 10 to 100000"),
    ("[serve]\nclient_timeout = \"10\"\n", "client_timeout must be a int"),
])
def test_values_out_of_bounds_are_refused(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(_home(tmp_path, table))

"""[ra] in ztpki.toml: the enrolment core's rate limits reach the core, and
values outside their bounds are refused with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztpki.config import CONFIG_NAME, ConfigError, RaSettings, load_settings


def _home(tmp_path: Path, ra_table: str) -> Path:
    (tmp_path / CONFIG_NAME).write_text(
        '[instance]\nbase_url = "http://127.0.0.1:8080"\n' + ra_table, encoding="utf-8"
    )
    return tmp_path


def test_defaults_without_an_ra_table(tmp_path: Path) -> None:
    assert load_settings(_home(tmp_path, "")).ra == RaSettings()


def test_values_are_read_and_written_back(tmp_path: Path) -> None:
    table = "[ra]\nper_device_limit = 3\nper_device_window_seconds = 600\nglobal_limit = 5000\nglobal_window_seconds = 2\npoll_interval_seconds = 5\n"
    settings = load_settings(_home(tmp_path, table))
    assert settings.ra == RaSettings(3, 600, 5000, 2, 5)
    assert "[ra]" in settings.to_toml() and "global_limit = 5000" in settings.to_toml()


@pytest.mark.parametrize("table, message", [
    ("[ra]\nglobal_limit = 0\n", "global_limit must be from 1"),
    ("[ra]\nper_device_window_seconds = 7200\n", "per_device_window_seconds must be from 1 to 3600"),
    ("[ra]\nglobal_limit = \"many\"\n", "global_limit must be a int"),
    ("[ra]\nburst = 3\n", "unknown key(s) burst"),
])
def test_bad_values_are_refused(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(_home(tmp_path, table))


def test_the_core_gets_the_configured_limits(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ra"))
    from corehelpers import make_world

    world = make_world(tmp_path / "home")
    text = (world.instance.settings.home / CONFIG_NAME).read_text(encoding="utf-8")
    (world.instance.settings.home / CONFIG_NAME).write_text(
        text.replace("global_limit = 200", "global_limit = 7"), encoding="utf-8"
    )
    from ztpki.instance import Instance

    other = Instance.open(world.instance.settings.home)
    try:
        assert other.core.policy.global_limit == 7
        assert other.core.policy.per_device_limit == RaSettings().per_device_limit
    finally:
        other.close()

"""Reading ztpki.toml values: the error every bad value raises, and the
typed, bounded readers each table's parser uses."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """The instance home or its configuration is missing or wrong."""


def table(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def typed(section: dict[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
    value = section.get(key, default)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"[{where}] {key} must be a {kind.__name__}")
    return value



def bounded(section: dict[str, Any], key: str, default: int, bounds: dict[str, tuple[int, int]]) -> int:
    value: int = typed(section, key, int, default, "serve")
    low, high = bounds[key]
    if not low <= value <= high:
        raise ConfigError(f"[serve] {key} must be from {low} to {high}")
    return value

"""Token configuration and RFC 7512 ``pkcs11:`` URI parsing.

Error messages here name the attribute or source that is wrong but never
quote a value, because the value being parsed may be the PIN.
"""

from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from .errors import HsmConfigError

_UNRESERVED = string.ascii_letters + string.digits + "-._~"
_RES_AVAIL = ":[]@!$'()*+,="
_PATH_CHARS = frozenset(_UNRESERVED + _RES_AVAIL + "&%")
_QUERY_CHARS = frozenset(_UNRESERVED + _RES_AVAIL + "/?|%")
_PCT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_VENDOR = re.compile(r"x-[A-Za-z0-9-]+\Z")

_MAX_PIN_FILE = 1024
_PATH_ATTRS = frozenset(
    {
        "token", "manufacturer", "serial", "model", "library-manufacturer",
        "library-description", "library-version", "object", "type", "id",
        "slot-description", "slot-manufacturer", "slot-id",
    }
)
_QUERY_ATTRS = frozenset({"pin-source", "pin-value", "module-name", "module-path"})


@dataclass(frozen=True)
class TokenConfig:
    """Where a token lives and how to log in to it."""

    module: str
    token_label: str
    pin: str = field(repr=False)
    softhsm_conf: str | None = None

    @classmethod
    def from_uri(
        cls,
        uri: str,
        *,
        module: str | None = None,
        pin: str | None = None,
        pin_env: str | None = None,
        pin_file: str | None = None,
        softhsm_conf: str | None = None,
    ) -> TokenConfig:
        """Build a config from a ``pkcs11:`` URI; keyword arguments win over URI attributes."""
        path_attrs, query_attrs = _split_uri(uri)
        label = path_attrs.get("token")
        if label is None:
            raise HsmConfigError("pkcs11 URI has no token= attribute")
        token_label = _decode(label, "token")
        if not token_label:
            raise HsmConfigError("pkcs11 URI has an empty token= attribute")

        module_path = module
        if module_path is None and "module-path" in query_attrs:
            module_path = _decode(query_attrs["module-path"], "module-path")
        if not module_path:
            raise HsmConfigError(
                "no PKCS#11 module: give module-path= in the URI or the module argument"
            )

        resolved = _resolve_pin(pin, pin_env, pin_file, query_attrs)
        return cls(
            module=module_path, token_label=token_label, pin=resolved, softhsm_conf=softhsm_conf
        )


def _split_uri(uri: str) -> tuple[dict[str, str], dict[str, str]]:
    if not isinstance(uri, str):
        raise HsmConfigError("pkcs11 URI must be a string")
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme.lower() != "pkcs11":
        raise HsmConfigError("not a pkcs11: URI")
    path, _, query = rest.partition("?")
    path_attrs = _parse_attrs(path, ";", _PATH_CHARS, _PATH_ATTRS, "path")
    query_attrs = _parse_attrs(query, "&", _QUERY_CHARS, _QUERY_ATTRS, "query")
    return path_attrs, query_attrs


def _parse_attrs(
    text: str, sep: str, allowed: frozenset[str], known: frozenset[str], part: str
) -> dict[str, str]:
    attrs: dict[str, str] = {}
    if not text:
        return attrs
    for item in text.split(sep):
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise HsmConfigError(f"pkcs11 URI {part} component has an entry without name=value")
        vendor = _VENDOR.match(name) is not None
        if name not in known and not vendor:
            raise HsmConfigError(f"pkcs11 URI has an unknown {part} attribute {name[:40]!r}")
        bad = set(value) - allowed
        if bad:
            raise HsmConfigError(
                f"pkcs11 URI attribute {name!r} contains characters that must be percent-encoded"
            )
        if _PCT.search(value):
            raise HsmConfigError(f"pkcs11 URI attribute {name!r} has a malformed percent-escape")
        if vendor:
            continue
        if name in attrs:
            raise HsmConfigError(f"pkcs11 URI attribute {name!r} appears more than once")
        attrs[name] = value
    return attrs


def _decode(value: str, name: str) -> str:
    try:
        return unquote_to_bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise HsmConfigError(f"pkcs11 URI attribute {name!r} is not UTF-8") from None


def _resolve_pin(
    pin: str | None, pin_env: str | None, pin_file: str | None, query: dict[str, str]
) -> str:
    if pin is not None:
        value = pin
    elif pin_env is not None:
        env = os.environ.get(pin_env)
        if env is None:
            raise HsmConfigError(f"PIN environment variable {pin_env!r} is not set")
        value = env
    elif pin_file is not None:
        value = _read_pin_file(pin_file)
    elif "pin-value" in query:
        if "pin-source" in query:
            raise HsmConfigError("pkcs11 URI has both pin-value= and pin-source=")
        value = _decode(query["pin-value"], "pin-value")
    elif "pin-source" in query:
        value = _read_pin_file(_pin_source_path(_decode(query["pin-source"], "pin-source")))
    else:
        raise HsmConfigError(
            "no PIN: give pin-value= or pin-source= in the URI, or pin, pin_env or pin_file"
        )
    if not value:
        raise HsmConfigError("the PIN is empty")
    return value


def _pin_source_path(source: str) -> str:
    if source.startswith("|"):
        # RFC 7512 allows a program as PIN source; running one from a config
        # string is not something a CA should do on the say-so of a URI.
        raise HsmConfigError("pin-source programs ('|...') are not supported")
    if source.lower().startswith("file:"):
        rest = source[5:]
        if rest.startswith("//"):
            host, slash, path = rest[2:].partition("/")
            if host not in ("", "localhost") or not slash:
                raise HsmConfigError("pin-source file: URI must name a local absolute path")
            rest = "/" + path
        # A file: URI carries its own percent-encoding layer inside the pkcs11 one.
        source = _decode(rest, "pin-source")
    if not source:
        raise HsmConfigError("pin-source is empty")
    return source


def _read_pin_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            # Bounded, so that a pin-source of /dev/zero cannot eat the memory.
            data = fh.read(_MAX_PIN_FILE + 1)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise HsmConfigError(f"cannot read PIN file {path!r}: {reason}") from None
    if len(data) > _MAX_PIN_FILE:
        raise HsmConfigError(f"PIN file {path!r} is longer than {_MAX_PIN_FILE} characters")
    # Files written by editors and `echo` end in a newline that is not part of the PIN.
    return data.rstrip("\r\n")

"""Private SoftHSM2 instances: one config file and token directory per home."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

from .config import TokenConfig
from .errors import HsmConfigError, TokenUnavailable

SOFTHSM_MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


def find_softhsm_module() -> str:
    for candidate in SOFTHSM_MODULE_CANDIDATES:
        if os.path.exists(candidate):
            return candidate
    raise TokenUnavailable(
        "SoftHSM2 is not installed: no libsofthsm2.so in " + ", ".join(SOFTHSM_MODULE_CANDIDATES)
    )


def softhsm_conf_text(tokendir: pathlib.Path) -> str:
    return (
        f"directories.tokendir = {tokendir}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
    )


def ensure_softhsm_token(
    home: pathlib.Path,
    token_label: str,
    *,
    so_pin: str,
    user_pin: str,
    module: str | None = None,
) -> TokenConfig:
    """Create (once) a SoftHSM2 home with an initialised token labelled ``token_label``."""
    if not token_label or len(token_label.encode("utf-8")) > 32:
        raise HsmConfigError("a SoftHSM2 token label must be 1 to 32 bytes long")
    if module is None:
        module = find_softhsm_module()
    elif not os.path.exists(module):
        raise TokenUnavailable(f"PKCS#11 module {module!r} does not exist")
    util = shutil.which("softhsm2-util")
    if util is None:
        raise TokenUnavailable("SoftHSM2 is not installed: softhsm2-util is not on PATH")

    home = pathlib.Path(home).absolute()
    tokens = home / "tokens"
    conf = home / "softhsm2.conf"
    try:
        home.mkdir(parents=True, exist_ok=True)
        tokens.mkdir(mode=0o700, exist_ok=True)
        # mkdir's mode is filtered by the umask and ignored for an existing directory.
        tokens.chmod(0o700)
        text = softhsm_conf_text(tokens)
        if not conf.exists() or conf.read_text() != text:
            conf.write_text(text)
    except OSError as exc:
        raise TokenUnavailable(f"cannot prepare SoftHSM2 home {str(home)!r}: {exc}") from None

    config = TokenConfig(module=module, token_label=token_label, pin=user_pin, softhsm_conf=str(conf))
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    if token_label in _token_labels(util, env):
        return config
    # The PINs are on the command line because softhsm2-util has no other
    # non-interactive way to take them; they are never echoed into our errors.
    result = subprocess.run(
        [util, "--init-token", "--free", "--label", token_label, "--so-pin", so_pin, "--pin", user_pin],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        detail = _scrub(result.stderr.strip() or result.stdout.strip(), so_pin, user_pin)
        raise TokenUnavailable(f"softhsm2-util --init-token failed ({result.returncode}): {detail}")
    return config


def _token_labels(util: str, env: dict[str, str]) -> set[str]:
    result = subprocess.run(
        [util, "--show-slots"], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise TokenUnavailable(f"softhsm2-util --show-slots failed: {result.stderr.strip()}")
    labels = set()
    for line in result.stdout.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and key == "Label":
            labels.add(value.strip())
    return labels


def _scrub(text: str, *secrets: str) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text

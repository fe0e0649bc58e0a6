"""The user's config file: TOML in the user config folder, for the options set every time.

    # ~/.config/zchat/config.toml (ZCHAT_CONFIG names another file)
    name = "alice"
    broker = "tcp://chat.example.org:5555"
    server_key = "~/.config/zchat/broker.pub"
    bell = false
    colour = false

Each key is the default of the option of that name of `zchat connect`, `send`,
`who` and `bot`: an option given, or its environment variable, wins.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import platformdirs

if sys.version_info >= (3, 11):
    import tomllib
else:  # the package supports 3.10: tomli is tomllib's original (setup.cfg installs it there)
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

#: Each key of the file, its type, and the commands whose option it sets.
KEYS: dict[str, tuple[type, tuple[str, ...]]] = {
    "name": (str, ("connect", "send", "bot")),
    "broker": (str, ("connect", "send", "who", "bot")),
    "server_key": (str, ("connect", "send", "who", "bot")),
    "connect_timeout": (float, ("connect", "send", "who", "bot")),
    "bell": (bool, ("connect",)),
    "colour": (bool, ("connect",)),
}


class ConfigError(Exception):
    """The file cannot be read or holds what is not an option: said with its path."""


def config_path() -> Path:
    return Path(os.environ.get("ZCHAT_CONFIG") or Path(platformdirs.user_config_dir("zchat")) / "config.toml")


def default_map(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """click's default_map of the file: {command: {option: value}}; empty without a file."""
    path = path or config_path()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from None
    commands: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if key not in KEYS:
            raise ConfigError(f"{path}: unknown setting {key!r}; the settings are {', '.join(KEYS)}")
        kind, used_by = KEYS[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ConfigError(f"{path}: {key} must be a {kind.__name__}, not {value!r}")
        for command in used_by:
            commands.setdefault(command, {})[key] = value
    return commands

"""CURVE key pairs on disk: `zchat keygen`, the broker's secret and each user's own pair.

Files are ZeroMQ certificates (the ZPL text that czmq's zcert and pyzmq's
zmq.auth write and read): `zchat.key` holds the public and the secret key
and is private to its owner (mode 0600); `zchat.pub` holds the public key
only. No cryptography here: libzmq makes and uses the keys.
"""

from __future__ import annotations

import os
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import platformdirs
import zmq
import zmq.auth
from zmq.utils import z85

SECRET_FILE = "zchat.key"
PUBLIC_FILE = "zchat.pub"
#: A CURVE key is 32 bytes, 40 characters in z85.
Z85_LENGTH = 40


class KeyFileError(Exception):
    """A key or key file that cannot be used; the text says why and what to do."""


class KeyPair(NamedTuple):
    public: bytes  # z85
    secret: bytes  # z85


def home() -> Path:
    """Where the user's own keys live: $ZCHAT_HOME, else the per-user config folder."""
    return Path(os.environ.get("ZCHAT_HOME") or platformdirs.user_config_dir("zchat"))


def is_key(text: str | bytes) -> bool:
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) != Z85_LENGTH:
        return False
    try:
        return len(z85.decode(raw)) == 32
    except (ValueError, KeyError, TypeError):
        return False


def _certificate(kind: str, public: bytes, secret: bytes | None = None) -> str:
    lines = [
        f"#   ZeroMQ CURVE {kind} certificate, made by zchat keygen on {datetime.now(timezone.utc):%Y-%m-%d}",
        *(["#   Keep this file secret: anyone who reads it can be this key."] if secret else []),
        "",
        "metadata",
        "curve",
        f'    public-key = "{public.decode()}"',
        *([f'    secret-key = "{secret.decode()}"'] if secret else []),
    ]
    return "\n".join(lines) + "\n"


def generate(folder: Path, force: bool = False) -> KeyPair:
    """A new key pair in `folder` (created 0700 if missing); refuses to replace one unless `force`."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret_path, public_path = folder / SECRET_FILE, folder / PUBLIC_FILE
    if secret_path.exists() and not force:
        raise KeyFileError(f"{secret_path} exists already; keep it, or replace it with --force")
    pair = KeyPair(*zmq.curve_keypair())
    # Written beside the target and renamed: the secret is never in a file others may read.
    partial = folder / f".{SECRET_FILE}.{os.getpid()}"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(_certificate("Secret", pair.public, pair.secret))
    os.replace(partial, secret_path)
    public_path.write_text(_certificate("Public", pair.public))
    public_path.chmod(0o644)
    return pair


def load_pair(path: Path) -> KeyPair:
    """The key pair in a secret key file; refuses a file that others may read."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise KeyFileError(f"cannot read the secret key file {path}: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"refusing to use the secret key file {path}: group or others may access it "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise KeyFileError(f"cannot read the secret key file {path}: {e}") from None
    if secret is None or not is_key(public) or not is_key(secret):
        raise KeyFileError(
            f"{path} is not a zchat secret key file (no valid public-key and secret-key lines)"
        )
    return KeyPair(public, secret)


def own_pair(folder: Path | None = None) -> tuple[KeyPair, bool]:
    """The user's key pair, made on first use: (pair, True when just made)."""
    folder = folder or home()
    if (folder / SECRET_FILE).exists():
        return load_pair(folder / SECRET_FILE), False
    return generate(folder), True


def server_key(value: str) -> bytes:
    """A broker's public key, given as z85 text or as a file holding it (bare, or a certificate)."""
    value = value.strip()
    if is_key(value):
        return value.encode()
    path = Path(value).expanduser()
    if not path.is_file():
        raise KeyFileError(f"{value!r} is neither a 40-character z85 key nor a file holding one")
    try:
        text = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read the server key file {path}: {e.strerror}") from None
    key = text.strip()
    if b"public-key" in text:
        key = zmq.auth.load_certificate(path)[0]
    if not is_key(key):
        raise KeyFileError(f"{path} holds no public key: expected 40 z85 characters or a certificate")
    return key


def allowlist(folder: Path) -> dict[str, str]:
    """NAME.pub files in `folder`, as ssh's authorized keys: name key -> z85 public key."""
    if not folder.is_dir():
        raise KeyFileError(f"{folder} is not a folder of NAME.pub files")
    listed = {path.stem.lower(): server_key(str(path)).decode() for path in sorted(folder.glob("*.pub"))}
    if not listed:
        raise KeyFileError(f"{folder} holds no NAME.pub files: nobody could register")
    return listed

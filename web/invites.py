"""Invitations: how a web user proves a name to a gateway in front of a CURVE broker.

`zchat web invite NAME` makes NAME a key pair that the gateway holds (NAME/zchat.key in
the gateway's key folder) and a secret token, of which only a hash is kept (NAME/invite).
The link it prints carries the token in its #fragment, which browsers send to no server.
Signing in as NAME needs that token; the broker then sees NAME's key, so a name bound to
someone else's key (a terminal user's) stays theirs. docs/SECURITY.md has the design.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from zchat.common import keys
from zchat.common.keys import KeyPair

INVITE_FILE = "invite"


def default_folder() -> Path:
    return keys.home() / "web"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Invites:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _user(self, name: str) -> Path:
        return self.folder / name.lower()

    def create(self, name: str) -> tuple[str, KeyPair]:
        """A new token for `name` (the old one stops working) and the key pair it signs in with."""
        user = self._user(name)
        user.mkdir(parents=True, exist_ok=True, mode=0o700)
        pair, _ = keys.own_pair(user)
        token = secrets.token_urlsafe(32)
        partial = user / f".{INVITE_FILE}.{os.getpid()}"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(_digest(token) + "\n")
        os.replace(partial, user / INVITE_FILE)
        return token, pair

    def check(self, name: str, token: str) -> KeyPair | None:
        """The key pair of `name` if `token` is its invitation, else None."""
        user = self._user(name)
        try:
            kept = (user / INVITE_FILE).read_text().strip()
        except OSError:
            return None
        if not token or not hmac.compare_digest(kept, _digest(token)):
            return None
        try:
            return keys.load_pair(user / keys.SECRET_FILE)
        except keys.KeyFileError:
            return None

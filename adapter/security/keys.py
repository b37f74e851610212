"""API keys: the key file (`ROLE SHA256-HEX  # name=NAME` lines), its parsing and the
lookup of a presented key. Only the SHA-256 of a key is ever stored."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from radproto.adapter.security.principal import ROLES, Principal
from radproto.model.errors import ConfigError

# ---------------------------------------------------------------------------- API keys

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
#: A key's name rides in the line's comment: `ROLE SHA256-HEX  # name=NAME`.
_NAME_COMMENT = re.compile(r"(?:^|\s)name=(\S+)")
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class ApiKey:
    role: str
    sha256: str  # lower-case hex of SHA-256(key)
    line: int
    name: str = ""  # from the line's `# name=NAME` comment (radproto keys create)


def api_key_line(role: str, sha256: str, name: str = "") -> str:
    """One line of the API key file (what parse_api_keys reads back)."""
    return f"{role} {sha256}" + (f"  # name={name}" if name else "")


def parse_api_keys(text: str, *, path: str = "<api keys>") -> list[ApiKey]:
    """Parse `ROLE SHA256-HEX` lines ('#' comments and blank lines allowed; a comment
    `name=NAME` names the key). A bad line raises ConfigError naming the file, the line and
    the field."""
    keys: list[ApiKey] = []
    seen: dict[tuple[str, str], int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line, _, comment = raw.partition("#")
        line = line.strip()
        named = _NAME_COMMENT.search(comment)
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ConfigError(f"expected 'ROLE SHA256-HEX', found {len(parts)} field(s)",
                              path=path, line=number, field="line")
        role, digest = parts
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r} (roles: {', '.join(ROLES)})",
                              path=path, line=number, field="role")
        if not _HEX64.match(digest):
            raise ConfigError("the key hash must be 64 hex digits (SHA-256 of the key; "
                              "e.g. `printf %s KEY | sha256sum`)", path=path, line=number,
                              field="sha256")
        if (role, digest.lower()) in seen:
            raise ConfigError(f"duplicate of line {seen[(role, digest.lower())]}",
                              path=path, line=number, field="sha256")
        seen[(role, digest.lower())] = number
        keys.append(ApiKey(role=role, sha256=digest.lower(), line=number,
                           name=named.group(1) if named else ""))
    return keys


class ApiKeyStore:
    """The configured keys; one key may hold several roles (one line per role)."""

    def __init__(self, keys: Iterable[ApiKey]):
        self._roles: dict[str, set[str]] = {}
        for key in keys:
            self._roles.setdefault(key.sha256, set()).add(key.role)

    def __len__(self) -> int:
        return len(self._roles)

    def authenticate(self, presented: str) -> Principal | None:
        digest = hashlib.sha256(presented.encode("utf-8")).hexdigest()
        match = None
        for known, roles in self._roles.items():  # constant-time compare against every key
            if hmac.compare_digest(known, digest):
                match = (known, roles)
        if match is None:
            return None
        return Principal(actor=f"api-key:{match[0][:12]}", roles=frozenset(match[1]),
                         auth="api-key")


def load_api_keys(path: str | Path) -> ApiKeyStore:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the API key file: {exc.strerror}", path=str(path),
                          field="security.api_keys_file") from exc
    return ApiKeyStore(parse_api_keys(text, path=str(path)))


def hash_api_key(key: str) -> str:
    """The SHA-256 hex an API key file lists for `key`."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()

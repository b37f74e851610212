"""`radproto keys`: create, list and revoke the API keys of the key file.

The file format and the hash are adapter/auth.py's (`ROLE SHA256-HEX  # name=NAME` per key,
parse_api_keys / hash_api_key / api_key_line): this module only edits the file. A key is
printed once, when created; the file holds its hash alone and is kept at mode 600.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from radproto.adapter.security import (
    KEY_NAME,
    ApiKey,
    api_key_line,
    hash_api_key,
    parse_api_keys,
)
from radproto.adapter.security.principal import ROLES
from radproto.model.errors import ConfigError

#: Bytes of randomness in a new key (256 bits), before URL-safe base64.
KEY_BYTES = 32
KEY_PREFIX = "rp_"


@dataclass(frozen=True)
class CreatedKey:
    key: str  # shown once
    name: str
    role: str
    sha256: str


def read_keys(path: Path) -> list[ApiKey]:
    """The keys of the file ([] when it does not exist yet)."""
    if not path.exists():
        return []
    return parse_api_keys(path.read_text(encoding="utf-8"), path=str(path))


def create_key(path: Path, role: str, name: str = "") -> CreatedKey:
    """A new random key for `role`, its hash appended to the file (created with mode 600).
    The name defaults to ROLE-N; names are unique in the file."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r} (roles: {', '.join(ROLES)})", field="--role")
    keys = read_keys(path)
    names = {k.name for k in keys if k.name}
    if not name:
        number = 1
        while f"{role}-{number}" in names:
            number += 1
        name = f"{role}-{number}"
    if not KEY_NAME.match(name):
        raise ConfigError("a name is 1-64 letters, digits and . _ @ - (no spaces)",
                          field="--name")
    if name in names:
        raise ConfigError(f"a key named {name!r} exists already (revoke it first)",
                          path=str(path), field="--name")
    key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
    digest = hash_api_key(key)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    _write_private(path, text + api_key_line(role, digest, name) + "\n")
    return CreatedKey(key=key, name=name, role=role, sha256=digest)


def revoke_key(path: Path, name: str) -> int:
    """Remove the key(s) named `name` from the file; returns how many lines went."""
    keys = read_keys(path)
    lines = {k.line for k in keys if k.name == name}
    if not lines:
        raise ConfigError(f"no key named {name!r}", path=str(path), field="NAME")
    text = path.read_text(encoding="utf-8").splitlines(keepends=True)
    _write_private(path, "".join(line for number, line in enumerate(text, start=1)
                                 if number not in lines))
    return len(lines)


def _write_private(path: Path, text: str) -> None:
    """Replace the file atomically, mode 600 from the first byte (never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def keys_from_cli(args: object) -> int:
    """`radproto keys create|list|revoke` (radproto/cli.py defines the flags)."""
    path = _keys_file(args)
    action = args.keys_command  # type: ignore[attr-defined]
    if action == "create":
        created = create_key(path, args.role, args.name or "")  # type: ignore[attr-defined]
        print(created.key)
        import sys

        print(f"radproto keys: {created.name} ({created.role}) added to {path}; the key is "
              "shown once, store it now", file=sys.stderr)
        return 0
    if action == "list":
        keys = read_keys(path)
        if not keys:
            print(f"no keys in {path}")
            return 0
        width = max(4, *(len(k.name or "-") for k in keys))
        print(f"{'NAME':<{width}}  {'ROLE':<11}  SHA256")
        for k in keys:
            print(f"{k.name or '-':<{width}}  {k.role:<11}  {k.sha256[:12]}...")
        return 0
    removed = revoke_key(path, args.name)  # type: ignore[attr-defined]
    print(f"revoked {args.name} ({removed} line(s)) in {path}; a running service "  # type: ignore[attr-defined]
          "reads the file at start: restart it")
    return 0


def _keys_file(args: object) -> Path:
    explicit = getattr(args, "keys_file", None)
    if explicit:
        return Path(explicit)
    from radproto.adapter.settings import load_settings

    settings = load_settings(getattr(args, "config", None), {})
    if settings.security.api_keys_file is None:
        raise ConfigError("no key file: pass --keys-file, or set security.api_keys_file "
                          "(RADPROTO_SECURITY__API_KEYS_FILE)", field="--keys-file")
    return Path(settings.security.api_keys_file)

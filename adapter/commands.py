"""The adapter's command-line entry points: `radproto audit` and `radproto purge` (each opens the
configured store, runs one operation, prints, exits). radproto/cli.py defines their flags.
"""

from __future__ import annotations

import json
from typing import Any

from radproto.adapter import audit
from radproto.adapter.retention import purge
from radproto.adapter.settings import settings_from_cli
from radproto.adapter.store import open_store
from radproto.model.errors import ConfigError


def audit_from_cli(args: Any) -> int:
    """`radproto audit`: print matching events as a table, JSON lines or a FHIR Bundle."""
    try:
        since = audit.parse_since(args.since)
    except ValueError as exc:
        raise ConfigError(str(exc), field="--since") from exc
    store = open_store(settings_from_cli(args).store)
    try:
        rows = audit.query(store, since=since, actor=args.actor, entity=args.entity,
                           action=args.action, limit=args.limit)
    finally:
        store.close()
    if args.format == "json":
        text = audit.format_json(rows)
    elif args.format == "fhir":
        text = json.dumps(audit.to_fhir_bundle(rows), indent=2)
    else:
        text = audit.format_table(rows)
    if text:
        print(text)
    return 0


def purge_from_cli(args: Any) -> int:
    """`radproto purge --older-than-days N`."""
    if args.older_than_days < 0:
        raise ConfigError("must be 0 or more", field="--older-than-days")
    store = open_store(settings_from_cli(args).store)
    try:
        audit.harden_audit_table(store)
        result = purge(store, args.older_than_days)
    finally:
        store.close()
    print(result.summary())
    return 0

"""The `radproto` command line: one place that defines every flag.

Every flag also reads the environment variable `RADPROTO_<FLAG>` (dashes become
underscores), so `--model` is `RADPROTO_MODEL`; `radproto train --config` reads
`RADPROTO_TRAIN_CONFIG`, because `RADPROTO_CONFIG` names the service's config file. A value
from the environment is parsed exactly as if it were given on the command line (types,
choices and errors alike); a flag given on the command line wins over its variable. A
repeatable flag's variable holds several values separated as its help says (`--data`:
`os.pathsep`, `--set`: `;`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from radproto import __version__
from radproto.model.errors import RadprotoError

ENV_PREFIX = "RADPROTO_"
log = logging.getLogger("radproto")
_TRUE = ("1", "true", "yes", "on")


def env_name(option: str) -> str:
    """The environment variable of a long option: `--mllp-port` -> `RADPROTO_MLLP_PORT`."""
    return ENV_PREFIX + option[2:].replace("-", "_").upper()


def rename_env(action: argparse.Action, variable: str) -> argparse.Action:
    """Make an option read `variable` instead of RADPROTO_<FLAG> (its help says so)."""
    old = getattr(action, "env_var", None)
    if old and action.help:
        action.help = action.help.replace(f"[env {old}]", f"[env {variable}]")
    action.env_var = variable  # type: ignore[attr-defined]
    return action


class _EnvDefaultsParser(argparse.ArgumentParser):
    """An ArgumentParser whose options fall back to RADPROTO_* environment variables.

    The variables are read when the command line is parsed, not when the parser is built:
    each one not overridden by its flag is put in front of the command line as that flag,
    so argparse types, checks and reports it like a flag (an `append` flag gets one
    argument per value; a `store_true` flag is given when the value is 1/true/yes/on).
    Each option's variable is on its action as `env_var` (and `env_sep` for repeatable
    ones)."""

    def _add_action(self, action: argparse.Action) -> argparse.Action:
        # Every option, also those added through a group, passes here.
        long = next((o for o in action.option_strings if o.startswith("--")), None)
        variable = None
        if long is not None and long not in ("--help", "--version"):
            variable = env_name(long)
            action.help = f"{action.help or ''} [env {variable}]".strip()
        action.env_var = variable  # type: ignore[attr-defined]
        action.env_sep = None  # type: ignore[attr-defined]
        return super()._add_action(action)

    def add_argument(self, *args: Any, env: str | None = None, env_sep: str | None = None,
                     **kwargs: Any) -> argparse.Action:  # type: ignore[override]
        """`env`: another variable than RADPROTO_<FLAG>; `env_sep`: for a repeatable flag,
        what separates its values in the variable."""
        action = super().add_argument(*args, **kwargs)
        if env:
            rename_env(action, env)
        action.env_sep = env_sep  # type: ignore[attr-defined]
        return action

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        given = list(sys.argv[1:] if args is None else args)
        self._from_env: dict[str, str] = {}
        return super().parse_known_args(self._env_arguments(given) + given, namespace)

    def _env_arguments(self, given: list[str]) -> list[str]:
        """The flags that environment variables stand for, where the command line lacks them."""
        if "-h" in given or "--help" in given:
            return []
        on_command_line = {id(a) for a in map(self._action_of, given) if a is not None}
        # A flag on the command line also silences the variables of the flags it excludes
        # (train: --preset given, RADPROTO_TRAIN_CONFIG set): the command line wins.
        for group in self._mutually_exclusive_groups:
            if any(id(a) in on_command_line for a in group._group_actions):
                on_command_line |= {id(a) for a in group._group_actions}
        extra: list[str] = []
        for action in self._actions:
            variable = getattr(action, "env_var", None)
            if not variable or variable not in os.environ or id(action) in on_command_line:
                continue
            value, flag = os.environ[variable], action.option_strings[-1]
            self._from_env[flag] = variable
            if action.nargs == 0:  # store_true
                if value.strip().lower() in _TRUE:
                    extra.append(flag)
            elif isinstance(action, argparse._AppendAction):
                parts = value.split(action.env_sep) if action.env_sep else [value]
                for part in parts:
                    if part.strip():
                        extra += [flag, part.strip()]
            else:
                extra.append(f"{flag}={value}")  # "=": a value starting with '-' stays one
        return extra

    def _action_of(self, arg: str) -> argparse.Action | None:
        """The option an argument string names (exactly or as an abbreviation), if any."""
        if not arg.startswith("--") or arg == "--":
            return None
        name = arg.split("=", 1)[0]
        if name in self._option_string_actions:
            return self._option_string_actions[name]
        matches = {id(a): a for option, a in self._option_string_actions.items()
                   if option.startswith(name)} if self.allow_abbrev else {}
        return next(iter(matches.values())) if len(matches) == 1 else None

    def error(self, message: str) -> Any:  # type: ignore[override]
        notes = [f"{flag} came from {variable}"
                 for flag, variable in getattr(self, "_from_env", {}).items()
                 if flag in message]
        super().error(message + (f" ({'; '.join(notes)})" if notes else ""))


def _command(subparsers, name: str, help_text: str, handler: Callable[[argparse.Namespace], int]):
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(handler=handler)
    parser.add_argument("--catalog", type=Path, default=None,
                        help="a site catalog file (CSV or YAML) extending the default")
    parser.add_argument("--catalog-mode", choices=["extend", "replace"], default=None,
                        help="whether the site catalog extends or replaces the default")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    return parser



# What the service's default model is, today. (Keep it true: it is the one place that says.)
_SERVE_MODEL = ("a model directory, models:/NAME@ALIAS, models:/NAME/N, 'default' (the "
                "model shipped with radproto) or 'embedded' (the untuned base model). "
                "Default: models:/radproto@champion from the MLflow registry (tracking_uri, "
                "default sqlite:///mlflow.db) when a site has registered one, else the "
                "shipped model, which loads in seconds; the service follows the champion "
                "alias and switches to it once one is registered.")


def build_parser() -> argparse.ArgumentParser:
    parser = _EnvDefaultsParser(
        prog="radproto",
        description="Suggests the imaging protocol for a radiology order.",
    )
    parser.add_argument("--version", action="version", version=f"radproto {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_EnvDefaultsParser)

    p = _command(sub, "corpus", "Write the synthetic training corpus.", _corpus)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--seed", type=int, default=13, help="random seed (same seed, same corpus)")
    p.add_argument("--size", type=int, default=24000, help="number of examples before dedup")

    p = _command(sub, "import", "Import a site's historical orders with their protocols.",
                 _import)
    p.add_argument("--input", type=Path, required=True, help="the site's file")
    p.add_argument("--format", choices=["csv", "jsonl", "hl7", "fhir"], required=True,
                   help="format of the input file")
    p.add_argument("--out", type=Path, required=True, help="order file to write (JSONL)")

    p = _command(sub, "train", "Fine-tune the classifier (QLoRA).", _train)
    source = p.add_mutually_exclusive_group(required=True)
    # RADPROTO_CONFIG is the service's config file (serve, audit, ...), not a training one.
    rename_env(source.add_argument("--config", type=Path, default=None,
                                   help="training config file (YAML)"),
               "RADPROTO_TRAIN_CONFIG")
    source.add_argument("--preset", default=None,
                        help="a named preset, e.g. 'default', 'gpu-7b' or 'tiny-test' "
                             "(exactly one of --config, --preset)")
    p.add_argument("--data", type=Path, action="append", default=None, env_sep=os.pathsep,
                   help="a corpus directory or order file (repeatable; in the variable "
                        f"separated by '{os.pathsep}'); default: the config's")
    p.add_argument("--out", type=Path, default=None, help="output directory for the model")
    p.add_argument("--register", default=None, help="register the model under this name")
    p.add_argument("--alias", default=None, help="set this alias on the registered version")
    p.add_argument("--resume", action="store_true", help="resume from the last checkpoint")
    p.add_argument("--force", action="store_true",
                   help="move the alias even if the new model is worse on the development "
                        "set than the model holding it (logged)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   env_sep=";", help="override one config field, e.g. --set epochs=2 "
                   "(repeatable; in the variable separated by ';')")

    p = _command(sub, "eval", "Evaluate a model on a labelled order file.", _eval)
    p.add_argument("--data", type=Path, required=True, help="labelled order file")
    p.add_argument("--model", required=True, help="model directory or models:/NAME@ALIAS")
    p.add_argument("--out", type=Path, required=True, help="report directory")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N orders only")
    p.add_argument("--baseline-train", type=Path, default=None,
                   help="training file for the TF-IDF baseline (default: train.* next to --data)")
    p.add_argument("--cross-fit", type=int, default=0, metavar="K",
                   help="also judge calibration fitted on --data itself, K-fold (blend, "
                        "temperature and threshold fitted on the other folds)")

    p = _command(sub, "calibrate", "Fit a trained model's blend with the lexical model, its "
                 "temperature and abstain threshold on labelled orders (e.g. eval/calib.jsonl "
                 "or a site's held-out history) and save it again.", _calibrate)
    p.add_argument("--model", required=True, help="model directory or models:/NAME@ALIAS")
    p.add_argument("--data", type=Path, required=True,
                   help="labelled orders to fit on (never the set you report on)")
    p.add_argument("--out", type=Path, required=True, help="directory of the calibrated model")
    p.add_argument("--lexical-data", type=Path, default=None,
                   help="corpus directory or order file the lexical model learns from "
                        "(default: the default synthetic corpus, regenerated)")
    p.add_argument("--no-lexical", action="store_true",
                   help="no lexical model: fit the temperature of the head alone")
    p.add_argument("--abstain-accuracy", type=float, default=0.95,
                   help="accuracy the abstain threshold aims for on --data")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")

    p = _command(sub, "predict", "Suggest protocols for every order in a file.", _predict)
    p.add_argument("--input", type=Path, required=True, help="order file")
    p.add_argument("--output", type=Path, required=True, help="predictions file (JSONL)")
    p.add_argument("--model", required=True, help="model directory or models:/NAME@ALIAS")
    p.add_argument("--batch-size", type=int, default=16, help="orders per batch")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")

    p = _command(sub, "serve", "Run the adapter service (MLLP + HTTP).", _serve)
    p.add_argument("--config", type=Path, default=None, help="service config file (YAML)")
    p.add_argument("--mllp-port", type=int, default=None, help="MLLP port (default 2575)")
    p.add_argument("--http-port", type=int, default=None, help="HTTP port (default 8080)")
    p.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    p.add_argument("--store", default=None,
                   help="store URL: sqlite:///path or postgresql://... (default sqlite)")
    p.add_argument("--model", default=None, help=_SERVE_MODEL)
    p.add_argument("--api-keys", type=Path, default=None,
                   help="API key file: one 'ROLE SHA256-HEX' line per key")

    p = _command(sub, "audit", "Query the audit trail: who read or changed what, and which "
                 "model and catalog version decided.", _audit)
    p.add_argument("--config", type=Path, default=None, help="service config file (YAML)")
    p.add_argument("--store", default=None, help="store URL (default: the service's)")
    p.add_argument("--since", default=None,
                   help="events at or after this ISO date/time, or a duration like 7d or 12h")
    p.add_argument("--actor", default=None, help="only this actor (user, client or api-key:...)")
    p.add_argument("--entity", default=None, help="only this entity: Type/id, Type or id")
    p.add_argument("--action", default=None, help="only this action (read, create, decide, ...)")
    p.add_argument("--format", choices=["table", "json", "fhir"], default="table",
                   help="table, JSON lines, or a FHIR Bundle of AuditEvent resources")
    p.add_argument("--limit", type=int, default=1000, help="at most this many events")

    p = _command(sub, "purge", "Purge raw messages and order notes older than N days "
                 "(suggestions, feedback and the audit trail are kept).", _purge)
    p.add_argument("--config", type=Path, default=None, help="service config file (YAML)")
    p.add_argument("--store", default=None, help="store URL (default: the service's)")
    p.add_argument("--older-than-days", type=float, required=True,
                   help="purge what was received more than this many days ago")

    p = _command(sub, "export-feedback", "Write the radiologists' feedback as training data "
                 "(the order file format), so the model learns the site's practice.",
                 _export_feedback)
    p.add_argument("--out", type=Path, required=True,
                   help="order file to write (.jsonl, .csv or .parquet)")
    p.add_argument("--config", type=Path, default=None, help="service config file (YAML)")
    p.add_argument("--store", default=None, help="store URL (default: the service's)")
    p.add_argument("--since", default=None, help="only feedback at or after this ISO date")

    p = _command(sub, "keys", "Create, list and revoke API keys (the key file of "
                 "security.api_keys_file; keys are stored as SHA-256 hashes).", _keys)
    actions = p.add_subparsers(dest="keys_command", required=True,
                               parser_class=_EnvDefaultsParser)
    for name, text in (("create", "a new key for a role: printed once, its hash appended to "
                        "the key file (created with mode 600)"),
                       ("list", "names, roles and hash prefixes (never keys)"),
                       ("revoke", "remove the key with this name")):
        a = actions.add_parser(name, help=text, description=text)
        a.add_argument("--keys-file", type=Path, default=None,
                       help="the key file (default: security.api_keys_file of the config)")
        a.add_argument("--config", type=Path, default=None, help="service config file (YAML)")
        if name == "create":
            a.add_argument("--role", required=True, choices=["integration", "radiologist",
                                                             "admin"], help="the key's role")
            a.add_argument("--name", default=None, help="a unique name (default ROLE-N)")
        elif name == "revoke":
            a.add_argument("name", help="the key's name (radproto keys list)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Before torch is imported: OpenMP threads that spin at barriers while their partner is
    # descheduled made a CPU training step 3-5x slower on a shared 2-core machine.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(message)s")
    try:
        return int(args.handler(args) or 0)
    except RadprotoError as exc:
        print(f"radproto {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _catalog(args: argparse.Namespace):
    from radproto.model.catalog import load_catalog

    return load_catalog(args.catalog, mode=args.catalog_mode)


def _corpus(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    from radproto.training.corpus import write_corpus

    report = write_corpus(args.out, catalog=catalog, seed=args.seed, size=args.size)
    print(report.summary())
    return 0


def _import(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    from radproto.training.importer import import_history

    report = import_history(args.input, args.format, args.out, catalog=catalog)
    print(report.summary())
    return 0 if report.written else 1


def _train(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    from radproto.training.finetune import train_from_cli

    return train_from_cli(args, catalog=catalog)


def _eval(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    from radproto.training.evaluate import evaluate_from_cli

    return evaluate_from_cli(args, catalog=catalog)


def _calibrate(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    from radproto.training.calibrate import calibrate_from_cli

    return calibrate_from_cli(args, catalog=catalog)


def _predict(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    from radproto.training.predict import predict_from_cli

    return predict_from_cli(args, catalog=catalog)


class _StopDuringStartup(BaseException):
    """SIGINT/SIGTERM before the service has installed its own handlers."""


def _serve(args: argparse.Namespace) -> int:
    import signal

    def stop(signum: int, frame: object) -> None:
        raise _StopDuringStartup

    # Until the service's event loop owns SIGINT/SIGTERM (imports, settings, opening the
    # store), a stop ends the command here, cleanly and with status 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    try:
        from radproto.adapter.default_model import load_default_classifier
        from radproto.adapter.service import serve_from_cli

        # the CLI wires the model the service loads: the configured one, else the default
        return serve_from_cli(args, model_provider=load_default_classifier)
    except _StopDuringStartup:
        return 0



def _audit(args: argparse.Namespace) -> int:
    from radproto.adapter.commands import audit_from_cli

    return audit_from_cli(args)


def _purge(args: argparse.Namespace) -> int:
    from radproto.adapter.commands import purge_from_cli

    return purge_from_cli(args)



def _keys(args: argparse.Namespace) -> int:
    from radproto.adapter.keyfile import keys_from_cli

    return keys_from_cli(args)


def _export_feedback(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from radproto.adapter.settings import load_settings
    from radproto.adapter.store import open_store
    from radproto.model.errors import ConfigError
    from radproto.training.feedback_export import export_feedback

    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError as exc:
            raise ConfigError("not an ISO date or date-time", field="--since") from exc
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
    settings = load_settings(args.config, {"store": args.store})
    store = open_store(settings.store)
    try:
        report = export_feedback(store, args.out, catalog=_catalog(args), since=since)
    finally:
        store.close()
    print(report.summary())
    return 0

if __name__ == "__main__":
    raise SystemExit(main())

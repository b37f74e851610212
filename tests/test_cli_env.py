"""Every flag of every command against its RADPROTO_* variable: the variable is read exactly
as the flag would be, and with both the flag wins (nothing crashes)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from radproto.cli import build_parser


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    return dict(sub.choices) if sub is not None else {}


def _commands() -> dict[str, argparse.ArgumentParser]:
    """Every command path ("keys create" included) with the parser of its last word."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        for name, child in _subcommands(parser).items():
            path = f"{prefix} {name}".strip()
            found[path] = child
            walk(path, child)

    walk("", build_parser())
    return found


def _leaf_args(command: str) -> list[str]:
    """The words and required arguments that complete `command` to a runnable command line
    (a command with subcommands gets its first one)."""
    parser = _commands()[command]
    words = command.split()
    while _subcommands(parser):
        name, parser = next(iter(_subcommands(parser).items()))
        words.append(name)
        words += _required(parser, None)
    return words


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if getattr(a, "env_var", None)]


def _values(action: argparse.Action, which: int) -> list[str]:
    """Two different valid command-line values for an option (which = 0 or 1)."""
    if action.choices:
        choices = list(action.choices)
        return [choices[which % len(choices)] if which == 0 else choices[-1]]
    kind = action.type
    if kind is int:
        return [str(7 + which)]
    if kind is float:
        return [str(0.5 / (which + 1))]
    if isinstance(action, argparse._AppendAction):
        return [f"/tmp/x/v{which}a=1", f"/tmp/x/v{which}b=2"]
    return [f"/tmp/x/value{which}"]


def _flag(action: argparse.Action, values: list[str]) -> list[str]:
    if action.nargs == 0:
        return [action.option_strings[-1]]
    out: list[str] = []
    for value in values:
        out += [action.option_strings[-1], value]
    return out


def _env_value(action: argparse.Action, values: list[str]) -> str:
    if action.nargs == 0:
        return "true"
    return (action.env_sep or "").join(values)


def _required(parser: argparse.ArgumentParser, tested: argparse.Action | None) -> list[str]:
    """Command-line arguments for every required option (and positional) but `tested`."""
    args: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        if not action.option_strings and action.nargs is None:
            args.append("positional-value")
        elif action.required and action is not tested and action.option_strings:
            args += _flag(action, _values(action, 0))
    for group in parser._mutually_exclusive_groups:
        if group.required and tested not in group._group_actions:
            first = group._group_actions[0]
            args += _flag(first, _values(first, 0))
    return args


def _cases() -> list[tuple[str, str]]:
    return [(name, action.option_strings[-1]) for name, parser in _commands().items()
            for action in _options(parser)]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("RADPROTO_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize(("command", "option"), _cases())
def test_each_variable_reads_like_its_flag_and_the_flag_wins(command, option, clean_env):
    parser = _commands()[command]
    action = next(a for a in parser._actions if option in a.option_strings)
    assert action.env_var.startswith("RADPROTO_")
    # Options of a command with subcommands (keys --log-level ... create) go before them.
    words = command.split()
    tail = _leaf_args(command)[len(words):]
    base = [*words, *_required(parser, action)]
    value, other = _values(action, 0), _values(action, 1)

    from_flag = vars(build_parser().parse_args([*base, *_flag(action, value), *tail]))

    clean_env.setenv(action.env_var, _env_value(action, value))
    from_env = vars(build_parser().parse_args([*base, *tail]))
    assert from_env == from_flag, f"{action.env_var} is read unlike {option}"

    if action.nargs == 0:  # a boolean: the variable says false, the flag true
        clean_env.setenv(action.env_var, "false")
        assert not vars(build_parser().parse_args([*base, *tail]))[action.dest]
    else:
        clean_env.setenv(action.env_var, _env_value(action, other))
    both = vars(build_parser().parse_args([*base, *_flag(action, value), *tail]))
    assert both == from_flag, f"{option} on the command line must win over {action.env_var}"


def test_the_service_config_variable_does_not_reach_train(clean_env):
    clean_env.setenv("RADPROTO_CONFIG", "/etc/radproto/service.yaml")
    args = build_parser().parse_args(["train", "--preset", "tiny-test"])
    assert args.config is None and args.preset == "tiny-test"
    args = build_parser().parse_args(["serve"])
    assert str(args.config) == "/etc/radproto/service.yaml"


def test_a_train_flag_wins_over_the_other_source_s_variable(clean_env):
    clean_env.setenv("RADPROTO_TRAIN_CONFIG", "/srv/train.yaml")
    args = build_parser().parse_args(["train", "--preset", "tiny-test"])
    assert (args.config, args.preset) == (None, "tiny-test")
    args = build_parser().parse_args(["train"])
    assert str(args.config) == "/srv/train.yaml" and args.preset is None
    clean_env.setenv("RADPROTO_PRESET", "default")
    args = build_parser().parse_args(["train", "--config", "/x.yaml"])
    assert (str(args.config), args.preset) == ("/x.yaml", None)


def test_both_train_sources_from_the_environment_is_a_clear_error(clean_env):
    env = {k: v for k, v in os.environ.items()}
    env.update(RADPROTO_TRAIN_CONFIG="/srv/train.yaml", RADPROTO_PRESET="tiny-test")
    result = subprocess.run([sys.executable, "-m", "radproto", "train"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "RADPROTO_PRESET" in result.stderr and "RADPROTO_TRAIN_CONFIG" in result.stderr


@pytest.mark.parametrize(("variable", "flag", "dest"), [("RADPROTO_DATA", "--data", "data"),
                                                          ("RADPROTO_SET", "--set", "overrides")])
def test_repeatable_flags_with_their_variable_do_not_crash(variable, flag, dest, clean_env):
    clean_env.setenv(variable, f"a=1{os.pathsep if flag == '--data' else ';'}b=2")
    args = build_parser().parse_args(["train", "--preset", "tiny-test", flag, "c=3"])
    assert [str(v) for v in getattr(args, dest)] == ["c=3"]
    args = build_parser().parse_args(["train", "--preset", "tiny-test"])
    assert [str(v) for v in getattr(args, dest)] == ["a=1", "b=2"]


def test_a_bad_value_in_a_variable_names_the_variable(clean_env):
    env = {**os.environ, "RADPROTO_SEED": "seven"}
    result = subprocess.run([sys.executable, "-m", "radproto", "corpus", "--out", "/tmp/x/c"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "RADPROTO_SEED" in result.stderr
    assert "invalid int value" in result.stderr


def test_serve_help_says_what_the_default_model_is(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Default: models:/radproto@champion" in text
    assert "default: the embedded model" not in text

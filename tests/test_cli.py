"""The command-line contract: the names scripts rely on, and RADPROTO_* environment variables."""

from __future__ import annotations

import subprocess
import sys

import pytest

from radproto.cli import build_parser, main


def test_every_flag_reads_its_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("RADPROTO_OUT", str(tmp_path))
    monkeypatch.setenv("RADPROTO_SEED", "7")
    args = build_parser().parse_args(["corpus"])
    assert args.out == tmp_path and args.seed == 7


def test_command_line_wins_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RADPROTO_SEED", "7")
    args = build_parser().parse_args(["corpus", "--out", str(tmp_path), "--seed", "9"])
    assert args.seed == 9


def test_boolean_flags_read_the_environment(monkeypatch):
    monkeypatch.setenv("RADPROTO_RESUME", "true")
    args = build_parser().parse_args(["train", "--preset", "default"])
    assert args.resume is True


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("corpus", ["--out", "--seed", "--size"]),
        ("import", ["--input", "--format", "--out"]),
        ("train", ["--config", "--preset", "--data", "--register", "--alias", "--resume"]),
        ("eval", ["--data", "--model", "--out"]),
        ("predict", ["--input", "--output", "--model"]),
        ("serve", ["--config", "--mllp-port", "--http-port", "--store", "--model", "--api-keys"]),
    ],
)
def test_help_documents_each_flag_and_its_variable(command, flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    variables = {"train --config": "RADPROTO_TRAIN_CONFIG"}  # RADPROTO_CONFIG: the service's
    for flag in flags:
        assert flag in text
        expected = "RADPROTO_" + flag[2:].replace("-", "_").upper()
        assert variables.get(f"{command} {flag}", expected) in text


def test_a_radproto_error_becomes_a_clear_message_and_exit_2(tmp_path):
    bad = tmp_path / "site.csv"
    bad.write_text("name,modality\nCT Knee,CAT\n")
    result = subprocess.run(
        [sys.executable, "-m", "radproto", "corpus", "--out", str(tmp_path / "c"),
         "--catalog", str(bad)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "line 2" in result.stderr and "modality" in result.stderr

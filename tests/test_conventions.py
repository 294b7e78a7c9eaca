"""CLI conventions: exit codes, --quiet, --verbose, plain output when not on a terminal."""

from __future__ import annotations

import pytest

import charlstm.data.prepare


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("the quick brown fox jumps over the lazy dog.\n" * 60)
    return path


def test_plain_output_off_a_terminal_has_no_escape_codes(run_cli, corpus, tmp_path):
    result = run_cli(
        "train",
        corpus,
        "--preset",
        "tiny",
        "--hidden",
        "16",
        "--embed",
        "8",
        "--steps",
        "4",
        "--bptt",
        "8",
        "--batch-size",
        "2",
        "--out",
        tmp_path / "run",
    )
    assert result.exit_code == 0, result.stderr
    assert "\x1b[" not in result.stderr  # no colours, no cursor movement
    assert "training summary" in result.stderr
    assert result.stdout == ""


def test_quiet_silences_everything_but_errors(run_cli, corpus, tmp_path):
    ok = run_cli("-q", "tokenize", corpus, "--out", tmp_path / "data")
    assert ok.exit_code == 0 and ok.stderr == "" and ok.stdout == ""
    again = run_cli("-q", "tokenize", corpus, "--out", tmp_path / "data")
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_usage_errors_exit_2_in_one_line(run_cli):
    result = run_cli("tokenize", "--no-such-option")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--help" in result.stderr


def test_a_bug_is_one_line_unless_verbose(run_cli, corpus, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something internal broke")

    monkeypatch.setattr(charlstm.data.prepare, "tokenize", broken)
    quiet = run_cli("tokenize", corpus, "--out", tmp_path / "a")
    assert quiet.exit_code == 1
    assert "unexpected RuntimeError: something internal broke" in quiet.stderr
    assert "--verbose" in quiet.stderr and "Traceback" not in quiet.stderr
    loud = run_cli("--verbose", "tokenize", corpus, "--out", tmp_path / "b")
    assert loud.exit_code == 1
    assert isinstance(loud.exception, RuntimeError)  # re-raised for the traceback


def test_every_command_has_help_with_an_example(run_cli):
    for command in (
        ["tokenize"],
        ["train"],
        ["eval"],
        ["sample"],
        ["bench"],
        ["info"],
        ["report"],
        ["inspect"],
        ["corpus", "get"],
        ["corpus", "list"],
        ["export"],
    ):
        result = run_cli(*command, "--help")
        assert result.exit_code == 0, command
        assert "Example" in result.stdout, command

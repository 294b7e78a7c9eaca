"""The command line in the environments users run it in (issue #35): a dumb terminal, COLUMNS
of 0 and 20, an ASCII locale with and without Python's UTF-8 mode, HOME unset. In each, one
child process runs every command in turn (tokenize, train, eval, sample with a non-ASCII
prime, inspect, report, info, export, --help, and a bad input) the way a shell would: each
command's stdout and stderr go to files of their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import tiny_args, word_text

DRIVER = """
import json, os, sys
from charlstm.cli.app import main
folder, commands = sys.argv[1], json.loads(sys.argv[2])
codes = []
for i, args in enumerate(commands):
    sys.stdout.flush(); sys.stderr.flush()
    for fd, name in ((1, "out"), (2, "err")):
        target = os.open(os.path.join(folder, f"{i}.{name}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    sys.stdout.flush(); sys.stderr.flush()
    codes.append(code)
with open(os.path.join(folder, "codes.json"), "w") as f:
    json.dump(codes, f)
"""

PRIME = "Café 東"

#: four children for six conditions (each child costs ~10 s of CPU on a slow 2-core machine):
#: each condition is in one of them, combined with one that touches other code (the terminal's
#: kind with its width, the locale with the home folder)
ENVIRONMENTS = {
    "TERM=dumb COLUMNS=20": {"TERM": "dumb", "COLUMNS": "20"},
    "COLUMNS=0": {"COLUMNS": "0"},
    "LC_ALL=C HOME unset": {"LC_ALL": "C", "LANG": "C", "HOME": None},
    "LC_ALL=C PYTHONUTF8=0": {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ENVIRONMENTS)
def test_every_command_works_in_this_environment(tmp_path, name):
    source = tmp_path / "corpus.txt"
    source.write_text(word_text(3000) + "Café naïve — 東京 😀\n" * 20, encoding="utf-8")
    tok, run = tmp_path / "tok", tmp_path / "run"
    commands = [
        ["tokenize", source, "--out", tok],
        ["train", tok, *tiny_args(), "--steps", 4, "--eval-every", 2, "--out", run],
        ["eval", run / "best.pt"],
        ["sample", run / "best.pt", "--length", 60, "--prime", PRIME, "--temperature", 1.5],
        ["inspect", run / "best.pt", "--prime", PRIME + " naïve"],
        ["report", run],
        ["info", run / "best.pt"],
        ["export", run / "best.pt", "--format", "safetensors", "--out", tmp_path / "model"],
        ["--help"],
        ["train", "--help"],
        ["tokenize", tmp_path / "missing.txt"],  # a bad input: still one line
    ]
    commands = [[str(a) for a in c] for c in commands]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key, value in ENVIRONMENTS[name].items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(out), json.dumps(commands)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    codes = json.loads((out / "codes.json").read_text())
    stdout = [(out / f"{i}.out").read_bytes() for i in range(len(commands))]
    stderr = [
        (out / f"{i}.err").read_bytes().decode("utf-8", "replace") for i in range(len(commands))
    ]
    for i, command in enumerate(commands[:-1]):
        assert codes[i] == 0, (command, stderr[i])
        assert "Traceback" not in stderr[i] and "unexpected" not in stderr[i], stderr[i]
    sampled = stdout[3].decode("utf-8")  # data on stdout is UTF-8 whatever the locale
    assert sampled.startswith(PRIME) and len(sampled) >= len(PRIME) + 60
    assert b"Usage" in stdout[8] + stdout[9] or "Usage" in stderr[8] + stderr[9]
    assert codes[-1] == 1
    lines = stderr[-1].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: corpus not found"), stderr[-1]
    assert all(stderr[i].strip() for i in (0, 2, 5, 6))  # the human output is there
    assert Path(tmp_path / "model" / "model.safetensors").exists()

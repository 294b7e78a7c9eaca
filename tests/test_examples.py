"""Every example in the README and in every command's `--help` runs as written after the quick
start, so none can drift again.

The quick start's state is built once: `scripts/quickstart.sh`'s own tokenize command, then a
tiny model in the folder its train command writes (`checkpoints/tinyshakespeare-auto`; that
the real command writes there is checked on the library's own rules, without training a 2 M
model). Each example then runs, in a fresh copy of that state, from a folder that holds the
checkout's `README.md`, `corpora/` and `examples/` as a clone does. The only substitutions keep
it fast: a time budget of minutes becomes one of a second (a new run also gets `--preset tiny`),
`--steps N` becomes N/100. Examples that cannot run in a test (a server that runs until stopped,
a download, minutes of benchmarks, a GPU) are listed in NOT_RUN with the reason, and still must
parse: their command, options and paths are checked."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

import charlstm.cli.app

REPO = Path(__file__).resolve().parent.parent
RUN = "checkpoints/tinyshakespeare-auto"
#: two layers of 48, so that examples naming a cell of the second layer (1:42) find it
TINY_SHAPE = ["--layers", "2", "--hidden", "48", "--embed", "16", "--bptt", "16",
              "--batch-size", "4"]  # fmt: skip

#: examples not run here, by their start, and why (they are still parsed)
NOT_RUN = {
    "bash scripts/": "the quick start and the test suite themselves (the fixture builds the "
    "quick start's state; scripts/test.sh runs this suite)",
    "source .venv/bin/activate": "a shell's own state (checked: the quick start makes .venv)",
    "pip install": "installs an extra (checked: the extra exists in pyproject.toml)",
    "mkdocs serve": "serves the docs until stopped (CI runs mkdocs build --strict)",
    "charlstm serve": "serves until stopped (tests/test_server.py drives the server)",
    "curl ": "needs the server running (tests/test_server.py)",
    "lm_eval ": "needs the server running and a task's data (tests/test_lm_eval.py runs it end "
    "to end on a task it writes)",
    "charlstm bench": "minutes of measuring (tests/test_bench.py runs its sections)",
    "charlstm corpus get": "downloads (tests/test_catalog.py serves the files locally)",
}


# -- where the examples are ------------------------------------------------------------------
def readme_examples() -> list[str]:
    """Each command line of the README's bash blocks, comments stripped."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            if command:
                lines.append(command)
    return lines


def help_examples() -> list[tuple[str, str]]:
    """(command path, example) for every command's epilog: `Examples:  A  ·  B  (then C)`."""
    found = []

    def walk(command, path: str) -> None:
        epilog = getattr(command, "epilog", None) or ""
        body = re.sub(r"^Examples?:\s+", "", epilog)
        for example in filter(None, (e.strip() for e in body.split("  ·  "))):
            found.append((path, re.sub(r"\s+\(then [^)]*\)", "", example)))
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(charlstm.cli.app.app), "charlstm")
    return found


def steps_of(example: str) -> list[list[str]]:
    """An example's commands, in order (`A  then  B`, `A && B`), each as words."""
    commands = []
    for part in example.split("  then  "):
        words: list[str] = []
        for word in shlex.split(part) + ["&&"]:
            if word == "&&":
                commands.append(words)
                words = []
            else:
                words.append(word)
    return [c for c in commands if c]


def reason_not_run(example: str) -> str | None:
    return next((why for start, why in NOT_RUN.items() if example.startswith(start)), None)


# -- running them ----------------------------------------------------------------------------
def fast(words: list[str]) -> list[str]:
    """The substitutions that keep a train example to a second (nothing else changes)."""
    if words[:2] != ["charlstm", "train"]:
        return words
    out = list(words)
    if "--time-budget" in out:
        out[out.index("--time-budget") + 1] = "0.01"
        if "--resume" not in out:
            out += ["--preset", "tiny", *TINY_SHAPE]
    if "--steps" in out:
        i = out.index("--steps") + 1
        out[i] = str(max(1, int(out[i]) // 100))
    return out


def run_cli(words: list[str]):
    result = CliRunner().invoke(charlstm.cli.app.app, words[1:])
    assert result.exit_code == 0, f"{shlex.join(words)}\n{result.stderr}"
    return result


def run_words(words: list[str]) -> None:
    """One command of an example: charlstm in process (`> FILE` gets its stdout, `| jq` reads
    it), or python."""
    if ">" in words:
        cut = words.index(">")
        Path(words[cut + 1]).write_text(run_cli(fast(words[:cut])).stdout, encoding="utf-8")
    elif "|" in words:
        cut = words.index("|")
        result = run_cli(fast(words[:cut]))
        jq = words[cut + 1 :]
        assert jq[0] == "jq", "only `| jq` pipes are run"
        if shutil.which("jq"):
            subprocess.run(jq, input=result.stdout, text=True, check=True, capture_output=True)
        else:  # the filter of a `jq .key` example, without jq installed
            assert re.fullmatch(r"\.\w+", jq[-1]) and jq[-1][1:] in json.loads(result.stdout)
    elif words[0] == "charlstm":
        run_cli(fast(words))
    elif words[0] == "python":
        subprocess.run([sys.executable, *words[1:]], check=True, capture_output=True, text=True)
    else:
        raise AssertionError(f"no way to run {shlex.join(words)}: run it or list it in NOT_RUN")


def parse_only(words: list[str]) -> None:
    """What a NOT_RUN example can be checked for: its command parses, its files exist."""
    words = words[: words.index(">")] if ">" in words else words
    if words[0] == "charlstm":
        group = typer.main.get_command(charlstm.cli.app.app)
        ctx = group.make_context("charlstm", words[1:])
        command = group
        while hasattr(command, "resolve_command"):  # a group: on to the subcommand
            name, command, args = command.resolve_command(ctx, _rest(ctx))
            ctx = command.make_context(name, args, parent=ctx)
        for word in words:
            if word.startswith("checkpoints/"):
                assert Path(word).exists(), word
    elif words[:2] == ["pip", "install"]:
        extras = re.findall(r"\[(\w+)\]", " ".join(words))
        pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
        for extra in extras:
            assert re.search(rf"^{extra} = \[", pyproject, flags=re.M), extra


def _rest(ctx) -> list[str]:
    """A group context's unparsed words (click 8.2 renamed protected_args)."""
    protected = getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])
    return [*protected, *ctx.args]


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory) -> Path:
    """The folder a clone is after `bash scripts/quickstart.sh`, with a tiny model."""
    home = tmp_path_factory.mktemp("clone")
    for name in ("README.md", "corpora", "examples", "pyproject.toml"):
        (home / name).symlink_to(REPO / name)
    script = (REPO / "scripts" / "quickstart.sh").read_text(encoding="utf-8")
    commands = [shlex.split(line)[1:] for line in script.splitlines() if line.startswith("run ")]
    tokenize, train_line = commands[0], commands[1]
    assert train_line[:2] == ["train", "data/tinyshakespeare"] and "--out" not in train_line
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        run_cli(["charlstm", *tokenize])
        run_cli(["charlstm", "train", "data/tinyshakespeare", "--out", RUN, "--preset", "tiny",
                 *TINY_SHAPE, "--steps", "4", "--eval-every", "2", "--log-every", "1"])  # fmt: skip
    return home


def test_the_quick_start_trains_the_folder_the_examples_read(quick_start):
    """Its train command, as written, goes to checkpoints/tinyshakespeare-auto on a CPU: the
    data's name, the default preset for a budget, the default folder."""
    from charlstm.data.dataset import load_dataset
    from charlstm.training.plan import default_out, default_preset

    name = load_dataset(quick_start / "data" / "tinyshakespeare").name
    preset = default_preset({"time_budget_min": 5, "device": "cpu"})
    assert default_out(name, preset) == Path(RUN)
    script = (REPO / "scripts" / "quickstart.sh").read_text(encoding="utf-8")
    assert f"run eval {RUN}/best.pt" in script and "source .venv/bin/activate" in script


EXAMPLES = [("README", e) for e in readme_examples()] + help_examples()


@pytest.mark.parametrize(("where", "example"), EXAMPLES, ids=[e for _, e in EXAMPLES])
def test_the_example_runs_as_written_after_the_quick_start(
    where, example, quick_start, tmp_path, monkeypatch
):
    home = tmp_path / "clone"
    shutil.copytree(quick_start, home, symlinks=True)
    monkeypatch.chdir(home)
    commands = steps_of(example)
    if reason_not_run(example) is not None:
        for words in commands:
            parse_only(words)
        return
    for words in commands:
        run_words(words)


def test_there_are_examples_everywhere_and_few_are_not_run():
    """Every command's help has an example, and most examples run."""
    assert len(readme_examples()) >= 12
    paths = {path for path, _ in help_examples()}
    assert {"charlstm train", "charlstm eval", "charlstm sample", "charlstm inspect",
            "charlstm serve", "charlstm export", "charlstm report", "charlstm info",
            "charlstm tokenize", "charlstm bench", "charlstm corpus get"} <= paths  # fmt: skip
    skipped = [e for _, e in EXAMPLES if reason_not_run(e)]
    assert len(skipped) <= len(EXAMPLES) // 3, skipped


def test_json_examples_print_json(quick_start, tmp_path, monkeypatch):
    """The README's `--json` examples print one JSON document on stdout."""
    monkeypatch.chdir(quick_start)
    for example in readme_examples():
        words = shlex.split(example)
        if words[:1] == ["charlstm"] and "--json" in words and ">" not in words:
            json.loads(run_cli(fast(words)).stdout)

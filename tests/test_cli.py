"""The real CLI: an end-to-end run as a child process (tokenize -> train -> eval -> sample), the
stdout/stderr contract in process with Typer's runner, and every bad input: exit code, one
line on stderr with the key words, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import TINY_KWARGS, tiny_args, word_text
from typer.testing import CliRunner

import charlstm.cli.app
from charlstm.data.prepare import tokenize
from charlstm.generation.sampling import generate
from charlstm.model.checkpoint import read_checkpoint
from charlstm.training.trainer import train

SMALL = tiny_args(device="cpu")


def cli(*args: object):
    """Run the CLI in process; stdout and stderr come back separately."""
    return CliRunner().invoke(charlstm.cli.app.app, [str(a) for a in args])


def assert_clean_error(result, exit_code: int, *words: str) -> str:
    """Exit code as given, nothing on stdout, exactly one 'error:' line on stderr containing
    `words`, and no traceback anywhere. Returns the line."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == exit_code, (result.exit_code, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """A tokenized folder and a 20-step run on it, made with the library."""
    root = tmp_path_factory.mktemp("cli")
    source = root / "corpus.txt"
    source.write_text(word_text(3000), encoding="utf-8")
    data = tokenize(source, root / "tok").out
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train(
        data,
        root / "run",
        **TINY_KWARGS,
        steps=20,
        eval_every=10,
        dropout=0.0,
        device="cpu",
    )
    torch.set_num_threads(threads)
    return {"data": data, "run": root / "run", "best": root / "run" / "best.pt", "source": source}


# -- end to end, as a user runs it ---------------------------------------------------------------
@pytest.mark.slow
def test_end_to_end_in_a_child_process(tmp_path, run_cli_subprocess):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(word_text(3000, seed=5), encoding="utf-8")
    data, out = tmp_path / "tok", tmp_path / "run"

    tokenized = run_cli_subprocess("tokenize", corpus, "--out", data)
    assert tokenized.returncode == 0, tokenized.stderr
    assert (data / "meta.json").is_file()

    trained = run_cli_subprocess(
        "train", data, "--out", out, *SMALL, "--steps", "30", "--eval-every", "15"
    )
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout == ""  # progress and summary are for humans: stderr
    assert "Traceback" not in trained.stderr
    for name in ("last.pt", "best.pt", "metrics.jsonl", "config.json"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [15, 30]

    evaluated = run_cli_subprocess("eval", out / "best.pt", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "Traceback" not in evaluated.stderr
    lines = evaluated.stdout.splitlines()
    assert len(lines) == 1
    scores = json.loads(lines[0])
    assert {"loss", "bpc", "perplexity", "chars", "seconds"} <= set(scores)
    assert scores["split"] == "val"
    assert scores["chars"] == len(np.load(data / "val.npy")) - 1
    assert scores["bpc"] == pytest.approx(scores["loss"] / np.log(2))
    assert scores["perplexity"] == pytest.approx(np.exp(scores["loss"]))

    sampled = run_cli_subprocess(
        "sample", out / "best.pt", "--prime", "the cat", "--length", "50", "--seed", "1"
    )
    assert sampled.returncode == 0, sampled.stderr
    assert "Traceback" not in sampled.stderr
    assert sampled.stdout.startswith("the cat")
    assert sampled.stdout.endswith("\n")
    assert len(sampled.stdout) == len("the cat") + 50 + 1
    # exactly the library's text for the same arguments
    (text,) = generate(out / "best.pt", prime="the cat", length=50, seed=1)
    assert sampled.stdout == text + "\n"


# -- stdout carries data only --------------------------------------------------------------------
def test_sample_prints_exactly_the_text(run):
    result = cli("sample", run["best"], "--prime", "the dog", "--length", "50", "--seed", "1")
    assert result.exit_code == 0, result.stderr
    (text,) = generate(run["best"], prime="the dog", length=50, seed=1)
    assert result.stdout == text + "\n"
    assert len(result.stdout) == len("the dog") + 50 + 1
    assert "Traceback" not in result.stderr


def test_sample_several_separated_by_blank_lines(run):
    result = cli(
        "sample", run["best"], "--prime", "a", "--length", "40", "--seed", "3", "--num-samples", "3"
    )
    assert result.exit_code == 0, result.stderr
    texts = generate(run["best"], prime="a", length=40, seed=3, num_samples=3)
    assert len(texts) == 3
    assert result.stdout == "\n\n".join(texts) + "\n"
    assert all(t.startswith("a") and len(t) == 41 for t in texts)


def test_sample_to_a_file_leaves_stdout_empty(run, tmp_path):
    path = tmp_path / "samples.txt"
    result = cli(
        "sample",
        run["best"],
        "--prime",
        "in",
        "--length",
        "30",
        "--seed",
        "2",
        "--num-samples",
        "2",
        "--output",
        path,
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    texts = generate(run["best"], prime="in", length=30, seed=2, num_samples=2)
    assert path.read_text(encoding="utf-8") == "\n\n".join(texts) + "\n"
    assert "wrote 2 sample(s)" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["samples.txt"]  # no temp file left


def test_sample_prime_file(run, tmp_path):
    prime = tmp_path / "prime.txt"
    prime.write_text("the red barn", encoding="utf-8")
    result = cli("sample", run["best"], "--prime-file", prime, "--length", "10", "--seed", "1")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("the red barn") and len(result.stdout) == 12 + 10 + 1


def test_eval_json_is_one_object(run):
    result = cli("eval", run["best"], "--json")
    assert result.exit_code == 0, result.stderr
    (line,) = result.stdout.splitlines()
    scores = json.loads(line)
    assert {"loss", "bpc", "perplexity", "chars", "seconds"} <= set(scores)
    assert scores["chars"] == len(np.load(run["data"] / "val.npy")) - 1


def test_eval_precision_bf16(run):
    """`eval --precision bf16`: the JSON and the table say which precision scored."""
    result = cli("eval", run["best"], "--precision", "bf16", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["precision"] == "bf16 LSTM matmuls"
    assert json.loads(cli("eval", run["best"], "--json").stdout)["precision"] == "fp32"
    table = cli("eval", run["best"], "--precision", "bf16")
    assert "bf16 LSTM matmuls" in table.stderr
    assert_clean_error(
        cli("eval", run["best"], "--precision", "bf16", "--dynamic"), 2, "--precision bf16"
    )


def test_eval_table_goes_to_stderr(run):
    result = cli("eval", run["best"], "--text", run["source"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "bits per char" in result.stderr


@pytest.mark.parametrize("command", ["train", "eval", "sample"])
def test_help_has_examples(command):
    result = cli(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout


def test_version():
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"charlstm {charlstm.__version__}"


# -- bad inputs: eval and sample -----------------------------------------------------------------
@pytest.fixture
def broken(run, tmp_path) -> dict[str, Path]:
    truncated = tmp_path / "truncated.pt"
    data = run["best"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.pt"
    text.write_text("just some notes\n", encoding="utf-8")
    return {"missing": tmp_path / "missing.pt", "truncated": truncated, "text": text}


@pytest.mark.bad_input
@pytest.mark.parametrize("command", ["eval", "sample"])
def test_missing_checkpoint(broken, command):
    assert_clean_error(
        cli(command, broken["missing"]), 1, "checkpoint not found", str(broken["missing"])
    )


@pytest.mark.bad_input
@pytest.mark.parametrize("command", ["eval", "sample"])
def test_truncated_checkpoint(broken, command):
    assert_clean_error(
        cli(command, broken["truncated"]), 1, "not a readable checkpoint", "truncated or corrupt"
    )


@pytest.mark.bad_input
@pytest.mark.parametrize("command", ["eval", "sample"])
def test_file_that_is_not_a_checkpoint(broken, command):
    assert_clean_error(cli(command, broken["text"]), 1, "not a charlstm checkpoint")


@pytest.mark.bad_input
@pytest.mark.parametrize("command", ["eval", "sample"])
def test_folder_instead_of_checkpoint(run, command):
    assert_clean_error(cli(command, run["run"]), 1, "is a folder", "best.pt")


@pytest.mark.bad_input("sample")
@pytest.mark.parametrize(
    ("options", "code", "words"),
    [
        (["--temperature", "-1"], 2, ["--temperature must be >= 0"]),
        (["--top-p", "0"], 2, ["--top-p must be in (0, 1]"]),
        (["--top-p", "1.5"], 2, ["--top-p must be in (0, 1]"]),
        (["--top-k", "-1"], 2, ["--top-k must be >= 0"]),
        (["--length", "-1"], 2, ["--length must be >= 0"]),
        (["--num-samples", "0"], 2, ["--num-samples must be >= 1"]),
        (["--prime", "a", "--prime-file", "x.txt"], 2, ["--prime or --prime-file"]),
        (["--prime", "the Zebra!"], 1, ["the prime text", "'Z' at 4", "'!' at 9"]),
        (["--prime-file", "/nonexistent/prime.txt"], 1, ["prime file not found"]),
    ],
)
def test_bad_sample_options(run, options, code, words):
    """Out-of-range values are usage errors (exit 2); a prime the model cannot read is 1."""
    assert_clean_error(cli("sample", run["best"], *options), code, *words)


@pytest.mark.bad_input("sample")
def test_sample_output_that_is_a_folder(run, tmp_path):
    assert_clean_error(cli("sample", run["best"], "--output", tmp_path), 1, "is a folder")


@pytest.mark.bad_input("sample")
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--top-k", "many"], ["--top-k", "sample --help"]),
        (["--bogus"], ["No such option", "--bogus"]),
        (["--dtype", "fp8"], ["--dtype", "fp8"]),
    ],
)
def test_sample_usage_errors(run, args, words):
    assert_clean_error(cli("sample", run["best"], *args), 2, *words)


@pytest.mark.bad_input("eval")
def test_eval_text_missing(run, tmp_path):
    assert_clean_error(
        cli("eval", run["best"], "--text", tmp_path / "gone.txt"),
        1,
        "text file not found",
        "gone.txt",
    )


@pytest.mark.bad_input("eval")
def test_eval_text_unreadable(run, tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("the café".encode("latin-1"))
    assert_clean_error(cli("eval", run["best"], "--text", path), 1, "not valid UTF-8")
    assert_clean_error(cli("eval", run["best"], "--text", tmp_path), 1, "is a folder")


@pytest.mark.bad_input("eval")
def test_eval_text_with_unknown_characters(run, tmp_path):
    path = tmp_path / "odd.txt"
    path.write_text("the cat sat on the Mat", encoding="utf-8")
    assert_clean_error(cli("eval", run["best"], "--text", path), 1, "'M' at 19", "--unknown skip")
    skipped = cli("eval", run["best"], "--text", path, "--unknown", "skip", "--json")
    assert skipped.exit_code == 0, skipped.stderr
    scores = json.loads(skipped.stdout)
    assert scores["skipped"] == 1 and scores["chars"] == len("the cat sat on the at") - 1


@pytest.mark.bad_input("eval")
def test_eval_bad_batch_size(run):
    assert_clean_error(cli("eval", run["best"], "--batch-size", "0"), 2, "--batch-size")


# -- bad inputs: train ---------------------------------------------------------------------------
@pytest.mark.bad_input("train")
@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--hidden", "-5"], ["--hidden must be a whole number >= 1", "-5"]),
        (["--dropout", "1.0"], ["--dropout must be in [0, 1)"]),
        (["--bptt", "0"], ["--bptt must be a whole number >= 1"]),
        (["--batch-size", "0"], ["--batch-size must be a whole number >= 1"]),
        (["--steps", "5", "--time-budget", "1"], ["at most one of --steps", "--time-budget"]),
        (["--save-every", "often"], ["--save-every 'often'"]),
        (["--seed", "-1"], ["--seed must be a whole number from 0 to 2^63-1, got -1"]),
        (["--seed", str(2**70)], ["--seed must be a whole number from 0"]),
        (["--device", "gpu"], ["--device 'gpu' is not a device"]),
        (["--resume", "--force"], ["--resume and --force contradict"]),
    ],
)
def test_bad_train_options(run, tmp_path, options, words):
    """A bad value is a usage error (exit 2): one line, and no run folder is left behind (one
    holding only config.json used to block both a retry and --resume)."""
    out = tmp_path / "run"
    assert_clean_error(cli("train", run["data"], "--out", out, *SMALL, *options), 2, *words)
    assert not out.exists()
    retry = cli("train", run["data"], "--out", out, *SMALL, "--steps", "2", "-q")
    assert retry.exit_code == 0, retry.stderr


@pytest.mark.bad_input("train")
def test_train_usage_error(run, tmp_path):
    assert_clean_error(
        cli("train", run["data"], "--out", tmp_path / "r", "--preset", "huge"), 2, "--preset"
    )


@pytest.mark.bad_input("train")
@pytest.mark.parametrize("decay", ["1", "-0.1", "1.5"])
def test_train_ema_outside_0_1_is_a_usage_error(run, tmp_path, decay):
    out = tmp_path / "r"
    assert_clean_error(
        cli("train", run["data"], "--out", out, *SMALL, "--ema", decay), 2, "--ema", "[0, 1)"
    )
    assert not out.exists()


def test_train_ema_then_resume_from_the_folder_alone(run, tmp_path):
    """--ema is recorded with the run: `--out RUN --resume` keeps averaging, no flag again."""
    out = tmp_path / "run"
    first = cli("train", run["data"], "--out", out, *SMALL, "--steps", "6", "--ema", "0.9", "-q")
    assert first.exit_code == 0, first.stderr
    assert json.loads((out / "config.json").read_text())["train"]["ema"] == 0.9
    again = cli("train", "--out", out, "--resume", "--steps", "9", "-q")
    assert again.exit_code == 0, again.stderr
    run_state = read_checkpoint(out / "last.pt")["run"]
    assert run_state["step"] == 9 and run_state["ema_updates"] == 9


@pytest.mark.bad_input("train")
def test_train_into_an_existing_run_is_refused_and_changes_nothing(run):
    before = {p.name: p.read_bytes() for p in run["run"].iterdir() if p.is_file()}
    line = assert_clean_error(
        cli("train", run["data"], "--out", run["run"], *SMALL, "--steps", "5"),
        1,
        "already holds a run",
        "--resume",
        "--force",
    )
    assert str(run["run"]) in line
    after = {p.name: p.read_bytes() for p in run["run"].iterdir() if p.is_file()}
    assert after["last.pt"] == before["last.pt"]
    assert after == before


@pytest.mark.bad_input("train")
def test_train_resume_without_a_run(run, tmp_path):
    assert_clean_error(
        cli("train", run["data"], "--out", tmp_path / "new", *SMALL, "--resume"),
        1,
        "nothing to resume",
    )


@pytest.mark.bad_input("train")
def test_train_missing_data(tmp_path):
    assert_clean_error(
        cli("train", tmp_path / "nothing", "--out", tmp_path / "r", *SMALL), 1, "corpus not found"
    )


def test_train_in_process_then_resume(run, tmp_path):
    """The CLI's train writes its summary to stderr only, and --resume continues the run."""
    out = tmp_path / "run"
    first = cli("train", run["data"], "--out", out, *SMALL, "--steps", "6", "--eval-every", "3")
    assert first.exit_code == 0, first.stderr
    assert first.stdout == ""
    assert "training summary" in first.stderr
    resumed = cli(
        "train",
        run["data"],
        "--out",
        out,
        *SMALL,
        "--steps",
        "9",
        "--eval-every",
        "3",
        "--resume",
        "--quiet",
    )
    assert resumed.exit_code == 0, resumed.stderr
    assert resumed.stdout == ""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines if '"eval"' in line] == [3, 6, 9]


# -- output: files are never overwritten, stdout problems are one line ---------------------------
@pytest.mark.bad_input("sample")
def test_sample_output_that_exists_needs_force(run, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("my notes\n", encoding="utf-8")
    assert_clean_error(
        cli("sample", run["best"], "--length", "5", "--output", path),
        1,
        "already exists",
        "--force",
    )
    assert path.read_text(encoding="utf-8") == "my notes\n"
    replaced = cli("sample", run["best"], "--length", "5", "--output", path, "--force")
    assert replaced.exit_code == 0 and path.read_text(encoding="utf-8") != "my notes\n"
    assert_clean_error(
        cli("sample", run["best"], "--output", tmp_path / "no" / "such" / "x.txt"),
        1,
        "does not exist",
    )


def test_samples_as_json_split_back_exactly(run, tmp_path):
    """Samples may contain blank lines, so the blank-line separator is ambiguous: --json is a
    list of the exact texts, on stdout or in --output."""
    result = cli("sample", run["best"], "--num-samples", "3", "--length", "60", "--seed", "4",
                 "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    texts = generate(run["best"], length=60, seed=4, num_samples=3)
    assert json.loads(result.stdout) == texts
    path = tmp_path / "s.json"
    to_file = cli("sample", run["best"], "--num-samples", "3", "--length", "60", "--seed", "4",
                  "--json", "--output", path)  # fmt: skip
    assert to_file.exit_code == 0 and to_file.stdout == ""
    assert json.loads(path.read_text(encoding="utf-8")) == texts


@pytest.mark.bad_input("eval, sample")
def test_a_diverged_checkpoint_is_one_line_for_eval_and_sample(run, tmp_path):
    from charlstm.model.checkpoint import read_checkpoint, save_checkpoint

    payload = read_checkpoint(run["best"])
    payload["model"]["head.bias"][0] = float("nan")
    save_checkpoint(payload, tmp_path / "nan.pt")
    for command in (["eval", "--json"], ["sample"]):
        assert_clean_error(cli(command[0], tmp_path / "nan.pt", *command[1:]), 1,
                           "non-finite weights", "diverged")  # fmt: skip


def test_eval_json_is_valid_json_even_for_an_unbounded_perplexity(run):
    from charlstm.evaluation.scoring import EvalResult

    result = EvalResult(800.0, 1154.2, float("inf"), 10, 0.1)
    assert json.loads(json.dumps(result.to_dict()))["perplexity"] is None


def test_eval_says_when_it_caps_the_streams(run):
    result = cli("eval", run["best"], "--batch-size", "100000", "--json")
    assert result.exit_code == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["streams"] == 1 and scores["streams_asked"] == 100000
    assert "warning: scored 1 streams, not 100000" in result.stderr


def test_no_arguments_prints_the_help(run_cli_subprocess):
    proc = run_cli_subprocess()
    assert proc.returncode == 0
    assert "tokenize" in proc.stdout and "Usage" in proc.stdout and "error" not in proc.stderr


def _sample_cmd(best: Path) -> list[str]:
    import sys

    return [sys.executable, "-m", "charlstm", "sample", str(best), "--length", "3000"]


def test_a_full_disk_on_stdout_is_one_line(run):
    import subprocess

    with open("/dev/full", "w") as full:
        proc = subprocess.run(_sample_cmd(run["best"]), stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "error: cannot write to standard output: No space left on device; redirect it to a "
        "file with room, or use --output where the command has it"
    )


def test_a_closed_stdout_is_one_line(run):
    import subprocess

    proc = subprocess.run(_sample_cmd(run["best"]), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=60,
                          preexec_fn=lambda: __import__("os").close(1))  # fmt: skip
    assert proc.returncode == 1
    assert "cannot write to standard output: it is closed" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_a_reader_that_stops_early_ends_sampling_quietly(run):
    import subprocess

    proc = subprocess.Popen([*_sample_cmd(run["best"])[:-1], "1000000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    assert len(proc.stdout.read(50)) == 50
    proc.stdout.close()  # like `| head -c 50`
    assert proc.wait(timeout=60) == 141
    assert proc.stderr.read() == b""


def _command_paths(group=None, prefix=()):
    """Every command of `charlstm`, as its words (`("corpus", "get")`), groups included."""
    import typer

    group = group or typer.main.get_command(charlstm.cli.app.app)
    yield prefix
    for name, sub in getattr(group, "commands", {}).items():
        yield from _command_paths(sub, (*prefix, name))


@pytest.mark.parametrize("words", list(_command_paths()), ids=lambda w: " ".join(w) or "charlstm")
def test_every_help_renders_at_80_columns_without_type_noise(words):
    result = CliRunner().invoke(
        charlstm.cli.app.app, [*words, "--help"], env={"COLUMNS": "80", "TERM": "xterm"}
    )
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "Usage:" in text and "<bool>" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    if words and words != ("corpus",):
        assert "Example" in text, f"charlstm {' '.join(words)} --help shows no example"


@pytest.mark.parametrize(
    "command, cls",
    [
        ("eval", "charlstm.evaluation.dynamic:DynamicSettings"),
        ("eval", "charlstm.evaluation.continuous_cache:CacheSettings"),
        ("serve", "charlstm.serving.limits:ServeLimits"),
        ("train", "charlstm.config:TrainConfig"),
    ],
)
def test_options_are_declared_once_in_the_library_dataclass(command, cls):
    """Each dataclass field with a help text is the command's option: same flag, same help."""
    import importlib

    from charlstm.cli.options import option_fields

    module, name = cls.split(":")
    fields_ = option_fields(getattr(importlib.import_module(module), name))
    result = CliRunner().invoke(charlstm.cli.app.app, [command, "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    for f in fields_:
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        assert flag in result.output, flag
        assert f.metadata["help"].split(" [")[0][:40] in result.output, flag


@pytest.mark.bad_input("eval")
@pytest.mark.parametrize(
    "args, message",
    [
        (["--dynamic-segment", "0"], "--dynamic-segment must be >= 1"),
        (["--cache-lambda", "1.5"], "--cache-lambda must be in [0, 1)"),
    ],
)
def test_a_bad_dataclass_option_is_one_line_before_any_work(args, message, tmp_path):
    missing = tmp_path / "nothing.pt"  # never opened: the option is refused first
    result = cli("eval", missing, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.bad_input("serve")
def test_a_bad_serve_limit_is_one_line():
    result = cli("serve", "nothing.pt", "--max-n", "0")
    assert result.exit_code == 2, result.output
    assert "--max-n must be from 1 to 128" in result.output and "Traceback" not in result.output

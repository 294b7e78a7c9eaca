"""charlstm.model.folder and `charlstm export --format safetensors`: a model folder that every
command loads as it loads the checkpoint (same greedy text, same loss), that plain torch +
safetensors load with the docs' snippet, that is read without unpickling, and whose every
defect is one line on stderr."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from tiny import word_run

from charlstm.errors import CharLSTMError
from charlstm.model.checkpoint import load_checkpoint, read_checkpoint
from charlstm.model.folder import CONFIG, FOLDER_FORMAT_VERSION, TOKENIZER, WEIGHTS

pytest.importorskip(
    "safetensors", reason="the safetensors extra: pip install 'charlstm[safetensors]'"
)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """A random 2 x LSTM(32) checkpoint (context-dependent weights) that records its tokenized
    data as a trained run's does, and its model folder exported through the CLI."""
    from typer.testing import CliRunner

    import charlstm.cli.app

    root = tmp_path_factory.mktemp("run")
    extra = {"run": {"step": 120, "best_val": 1.25, "elapsed_s": 3.5}}
    ckpt, _ = word_run(root, 4000, val_frac=0.2, hidden_size=32, seed=1, extra=extra)
    folder = root / "model"
    result = CliRunner().invoke(
        charlstm.cli.app.app, ["export", str(ckpt), "--format", "safetensors", "--out", str(folder)]
    )
    assert result.exit_code == 0, result.stderr
    return ckpt, folder


def copy_folder(folder: Path, to: Path) -> Path:
    to.mkdir()
    for name in (WEIGHTS, CONFIG, TOKENIZER):
        (to / name).write_bytes((folder / name).read_bytes())
    return to


def cli_ok(run_cli, *args) -> str:
    result = run_cli(*args)
    assert result.exit_code == 0, result.stderr
    return result.stdout


# -- what the folder holds -----------------------------------------------------------------------
def test_export_writes_the_three_files_every_tool_reads(run):
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    ckpt, folder = run
    assert sorted(p.name for p in folder.iterdir()) == sorted([WEIGHTS, CONFIG, TOKENIZER])
    payload = read_checkpoint(ckpt)
    tensors = load_file(folder / WEIGHTS)
    assert tensors.keys() == payload["model"].keys()
    for name, tensor in payload["model"].items():
        assert torch.equal(tensors[name], tensor), name
    config = json.loads((folder / CONFIG).read_text())
    assert config["format"] == "charlstm-model" and config["format_version"] == 1
    assert config["charlstm_version"] == __import__("charlstm").__version__
    for key, value in payload["model_config"].items():
        assert config[key] == value, key
    assert config["training"]["step"] == 120 and config["training"]["best_val_loss"] == 1.25
    assert config["data"]["folder"] == payload["data"]["folder"]
    assert (folder / TOKENIZER).read_text() == payload["vocab"]
    assert Tokenizer.from_file(str(folder / TOKENIZER)).get_vocab_size() == config["vocab_size"]


def test_tied_weights_are_stored_under_both_names(tmp_path, run_cli):
    from safetensors.torch import load_file

    from charlstm.config import ModelConfig
    from charlstm.data.vocab import Vocab
    from charlstm.model.checkpoint import save_checkpoint
    from charlstm.model.network import CharLSTM

    vocab = Vocab("char", "\n abc")
    config = ModelConfig(vocab_size=vocab.size, embed_size=16, hidden_size=16, tie_weights=True)
    model = CharLSTM(config)
    payload = {"model_config": config.to_dict(), "model": model.state_dict(),
               "vocab": vocab.to_json()}  # fmt: skip
    save_checkpoint(payload, tmp_path / "tied.pt")
    cli_ok(run_cli, "export", tmp_path / "tied.pt", "--format", "safetensors", "--out",
           tmp_path / "tied")  # fmt: skip
    tensors = load_file(tmp_path / "tied" / WEIGHTS)
    assert torch.equal(tensors["embedding.weight"], tensors["head.weight"])
    loaded = load_checkpoint(tmp_path / "tied").model
    assert loaded.head.weight is loaded.embedding.weight


# -- every command: the same outputs as the checkpoint ------------------------------------------
def test_greedy_sample_is_the_same_text(run, run_cli):
    ckpt, folder = run
    args = ("--prime", "the cat ", "--length", 300, "--temperature", 0)
    text = cli_ok(run_cli, "sample", ckpt, *args)
    assert cli_ok(run_cli, "sample", folder, *args) == text
    assert len(set(text)) > 5  # context-dependent weights: not one character repeated


def test_eval_gives_the_same_loss_on_the_runs_own_data(run, run_cli):
    ckpt, folder = run
    from_ckpt = json.loads(cli_ok(run_cli, "eval", ckpt, "--split", "val", "--json"))
    from_folder = json.loads(cli_ok(run_cli, "eval", folder, "--split", "val", "--json"))
    assert from_folder["loss"] == from_ckpt["loss"] and from_folder["chars"] == from_ckpt["chars"]
    assert from_folder["bpc"] == from_ckpt["bpc"]


def test_dynamic_eval_keeps_its_statistics_inside_the_folder(run, run_cli, tmp_path):
    ckpt, folder = run
    mine = copy_folder(folder, tmp_path / "model")
    args = ("--split", "val", "--dynamic", "--json")
    from_ckpt = json.loads(cli_ok(run_cli, "eval", ckpt, *args))
    from_folder = json.loads(cli_ok(run_cli, "eval", mine, *args))
    assert from_folder["loss"] == from_ckpt["loss"]
    assert (mine / "gradstats.pt").is_file()
    assert not (tmp_path / "model.gradstats.pt").exists()


def test_inspect_and_info_read_the_folder(run, run_cli):
    ckpt, folder = run
    text = ("--prime", "the cat sat on the mat", "--json")
    assert (
        json.loads(cli_ok(run_cli, "inspect", folder, *text))["bits"]
        == json.loads(cli_ok(run_cli, "inspect", ckpt, *text))["bits"]
    )
    facts = json.loads(cli_ok(run_cli, "info", folder, "--json"))
    reference = json.loads(cli_ok(run_cli, "info", ckpt, "--json"))
    assert facts["kind"] == "model folder" and facts["format_version"] == FOLDER_FORMAT_VERSION
    for key in ("model", "parameters", "vocab", "steps", "best_val", "data", "train"):
        assert facts[key] == reference[key], key


def test_serve_loads_the_folder_through_the_shared_loader(run):
    """`charlstm serve` builds its batch scheduler on `load_checkpoint`, as every command."""
    from charlstm.generation.batching import BatchScheduler

    ckpt, folder = run
    scheduler = BatchScheduler(folder, device="cpu")
    reference = load_checkpoint(ckpt).model.state_dict()
    for name, tensor in scheduler.model.state_dict().items():
        assert torch.equal(tensor, reference[name]), name


def test_export_from_a_folder_to_the_web_page(run, run_cli, tmp_path):
    """The folder exports on like a checkpoint; and the web page's hand-written
    weights.safetensors (the web export needs no safetensors package) is one the safetensors
    package reads, with the folder's tensors."""
    from safetensors.torch import load_file

    _, folder = run
    cli_ok(run_cli, "export", folder, "--format", "web", "--out", tmp_path / "web")
    web = load_file(tmp_path / "web" / "weights.safetensors")
    ours = load_file(folder / WEIGHTS)
    assert web.keys() == ours.keys()
    for name, tensor in ours.items():
        assert torch.equal(web[name], tensor), name


def test_loading_never_unpickles(run, monkeypatch):
    ckpt, folder = run

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = load_checkpoint(folder)
    assert loaded.config.hidden_size == 32
    with pytest.raises(CharLSTMError, match="unpickled"):  # the guard bites: a .pt unpickles
        load_checkpoint(ckpt)


# -- plain PyTorch, no charlstm: the snippet in docs/export.md ----------------------------------
def docs_snippet() -> str:
    page = (REPO / "docs" / "export.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    snippet = next(b for b in blocks if "load_file" in b)
    assert len(snippet.strip().splitlines()) <= 16, "the docs promise a short snippet"
    return snippet


def test_the_docs_snippet_loads_the_folder_with_plain_torch(run, run_cli):
    _, folder = run
    snippet = re.sub(r'^d = ".*?"', f"d = {str(folder)!r}", docs_snippet(), flags=re.M)
    code = f"import sys; sys.modules['charlstm'] = None\n{snippet}"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert child.returncode == 0, child.stderr
    expected = cli_ok(run_cli, "sample", folder, "--length", 200, "--temperature", 0)
    assert child.stdout == expected


# -- bad input: one line, exit 1, nothing written ------------------------------------------------
def one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.mark.parametrize("missing", [WEIGHTS, CONFIG, TOKENIZER])
def test_a_missing_file_is_named(run, run_cli, tmp_path, missing):
    folder = copy_folder(run[1], tmp_path / "model")
    (folder / missing).unlink()
    one_line_error(run_cli("sample", folder, "--length", 5), missing, "is missing", "export")


def test_weights_of_another_model_are_named(run, run_cli, tmp_path):
    folder = copy_folder(run[1], tmp_path / "model")
    config = json.loads((folder / CONFIG).read_text())
    config["hidden_size"] = 64
    (folder / CONFIG).write_text(json.dumps(config))
    one_line_error(run_cli("eval", folder, "--split", "val"), "does not match",
                   "lstm.weight_ih_l0 is [128, 16], config.json needs [256, 16]")  # fmt: skip


def test_a_tokenizer_of_another_size_is_named(run, run_cli, tmp_path):
    from charlstm.data.vocab import Vocab

    folder = copy_folder(run[1], tmp_path / "model")
    (folder / TOKENIZER).write_text(Vocab("char", "abc").to_json())
    one_line_error(run_cli("sample", folder), "has 3 symbols", "different models")


def test_a_truncated_safetensors_file_is_named(run, run_cli, tmp_path):
    folder = copy_folder(run[1], tmp_path / "model")
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])
    one_line_error(run_cli("info", folder), "not a readable safetensors file")


def test_a_config_from_a_newer_charlstm_is_refused_with_the_fix(run, run_cli, tmp_path):
    folder = copy_folder(run[1], tmp_path / "model")
    config = json.loads((folder / CONFIG).read_text())
    config.update(format_version=FOLDER_FORMAT_VERSION + 1, charlstm_version="9.0.0")
    (folder / CONFIG).write_text(json.dumps(config))
    one_line_error(run_cli("sample", folder), "written by charlstm 9.0.0", "upgrade charlstm")


def test_a_newer_charlstm_of_the_same_format_is_read(run, run_cli, tmp_path):
    folder = copy_folder(run[1], tmp_path / "model")
    config = json.loads((folder / CONFIG).read_text())
    config["charlstm_version"] = "9.0.0"
    (folder / CONFIG).write_text(json.dumps(config))
    assert run_cli("sample", folder, "--length", 5).exit_code == 0


def test_a_run_folder_is_not_a_model_folder(run, run_cli):
    ckpt, _ = run
    one_line_error(run_cli("sample", ckpt.parent), "is a folder", "best.pt", "safetensors")


def test_safetensors_missing_is_one_line_naming_the_extra(run, run_cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    one_line_error(run_cli("sample", run[1]), "charlstm[safetensors]")
    out = tmp_path / "model"
    one_line_error(run_cli("export", run[0], "--format", "safetensors", "--out", out),
                   "charlstm[safetensors]")  # fmt: skip
    assert not out.exists()


def test_export_refuses_a_folder_that_is_not_an_export_and_replaces_one_with_force(
    run, run_cli, tmp_path
):
    ckpt, _ = run
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    one_line_error(run_cli("export", ckpt, "--format", "safetensors", "--out", mine, "--force"),
                   "not an earlier charlstm export")  # fmt: skip
    assert (mine / "notes.txt").read_text() == "mine"
    out = tmp_path / "model"
    cli_ok(run_cli, "export", ckpt, "--format", "safetensors", "--out", out)
    again = run_cli("export", ckpt, "--format", "safetensors", "--out", out)
    one_line_error(again, "--force")
    cli_ok(run_cli, "export", ckpt, "--format", "safetensors", "--out", out, "--force")

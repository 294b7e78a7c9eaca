"""`charlstm inspect` and `charlstm.inspect_text`: the numbers (equal to eval's, every layer's
state equal to a step-by-step reference, a planted quote cell found), the text properties,
and every bad input through the real CLI (one line, exit 1, nothing written)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tiny import random_checkpoint, word_text
from typer.testing import CliRunner

import charlstm
import charlstm.cli.app
from charlstm.config import ModelConfig
from charlstm.data.prepare import tokenize
from charlstm.data.vocab import Vocab
from charlstm.errors import CharLSTMError
from charlstm.evaluation.scoring import evaluate, stream_nats
from charlstm.inspection.analysis import (
    DEFAULT_EXCERPT,
    Cell,
    inspect_text,
    parse_neuron,
    text_properties,
    to_dict,
)
from charlstm.model.checkpoint import load_checkpoint, save_checkpoint
from charlstm.model.network import CharLSTM

QUOTED = (
    'she said "run" and then "hide now, now" but the cat sat.\n'
    'The dog (a "red" one) ran [far].\n\nROMEO:\nWhat "light" breaks?\n'
)


def corpus_text(n: int = 900) -> str:
    return (QUOTED + word_text(n, seed=3))[:n]


@pytest.fixture(scope="module")
def vocab() -> Vocab:
    return Vocab("char", "".join(sorted(set(QUOTED + word_text(900, seed=3)))))


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory, vocab):
    return random_checkpoint(
        tmp_path_factory.mktemp("insp") / "a.pt", vocab, hidden_size=24, scale=1.0
    )


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(corpus_text(), encoding="utf-8")
    return path


# -- the numbers ---------------------------------------------------------------------------------
def test_losses_are_exactly_evals_batch_1(ckpt_path, text_file):
    result = inspect_text(ckpt_path, file=text_file, device="cpu")
    reference = evaluate(ckpt_path, text=text_file, batch_size=1, device="cpu")
    assert result.chars == reference.chars == len(corpus_text()) - 1
    assert math.isnan(result.nats[0]) and np.isfinite(result.nats[1:]).all()
    assert np.nansum(result.nats) / result.chars == pytest.approx(reference.loss, abs=1e-6)
    assert result.loss == pytest.approx(reference.loss, abs=1e-6)
    assert result.bpc == pytest.approx(reference.bpc, abs=1e-6)
    assert result.text == corpus_text()


def test_every_layers_h_and_c_match_a_step_by_step_reference(ckpt_path):
    text = corpus_text(600)  # more than one 256-character window
    result = inspect_text(ckpt_path, text, device="cpu")
    model = load_checkpoint(ckpt_path).model
    ids = torch.from_numpy(result.ids)
    lstm = model.lstm
    h = [torch.zeros(1, 24) for _ in range(2)]
    c = [torch.zeros(1, 24) for _ in range(2)]
    ref_h, ref_c = np.zeros((len(ids), 2, 24)), np.zeros((len(ids), 2, 24))
    with torch.no_grad():
        emb = model.embedding(ids)
        for t in range(len(ids)):
            x = emb[t : t + 1]
            for k in range(2):
                weights = [getattr(lstm, f"{n}_l{k}") for n in ("weight_ih", "weight_hh")]
                biases = [getattr(lstm, f"{n}_l{k}") for n in ("bias_ih", "bias_hh")]
                h[k], c[k] = torch.lstm_cell(x, (h[k], c[k]), *weights, *biases)
                ref_h[t, k], ref_c[t, k] = h[k][0], c[k][0]
                x = h[k]
        out, (hn, cn) = model.lstm(emb[:, None])
    assert result.h.shape == result.c.shape == (600, 2, 24)
    np.testing.assert_allclose(result.h, ref_h, atol=2e-5)
    np.testing.assert_allclose(result.c, ref_c, atol=2e-5)
    # the model's own forward: its last layer's outputs and its final state, bitwise on CPU
    np.testing.assert_array_equal(result.h[:, 1], out[:, 0].numpy())
    np.testing.assert_allclose(result.c[-1], cn[:, 0].numpy(), atol=1e-6)
    assert np.abs(result.c).max() > 0.5  # the check is not vacuous: states move


def test_top_guesses_and_rank_are_the_models_distribution(ckpt_path):
    result = inspect_text(ckpt_path, corpus_text(300), device="cpu", top_k=5)
    model = load_checkpoint(ckpt_path).model
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(result.ids)[:, None])
    probs = torch.softmax(logits[:-1, 0], -1).numpy()  # row t predicts character t + 1
    top = np.argsort(-probs, 1, kind="stable")[:, :5]
    np.testing.assert_array_equal(result.top_ids[1:], top)
    np.testing.assert_allclose(result.top_probs[1:], np.take_along_axis(probs, top, 1), atol=1e-6)
    assert (result.top_ids[0] == -1).all() and result.rank[0] == 0
    actual = probs[np.arange(len(probs)), result.ids[1:]]
    np.testing.assert_allclose(np.exp(-result.nats[1:]), actual, rtol=1e-4)
    expected_rank = (probs > actual[:, None]).sum(1) + 1
    np.testing.assert_array_equal(result.rank[1:], expected_rank)


def load_dataset_vocab(folder) -> Vocab:
    from charlstm.data.dataset import load_dataset

    return load_dataset(folder).vocab


def test_default_text_is_the_start_of_the_val_split(tmp_path):
    source = tmp_path / "corpus.txt"
    source.write_text(corpus_text(900) * 5, encoding="utf-8")
    data = tokenize(source, tmp_path / "tok").out
    vocab = load_dataset_vocab(data)
    path = random_checkpoint(
        tmp_path / "run.pt", vocab, hidden_size=16, extra={"data": {"folder": str(data)}}
    )
    val = np.load(data / "val.npy")
    result = inspect_text(path, device="cpu")
    assert result.excerpt and "(val)" in result.source
    assert len(result.ids) == min(DEFAULT_EXCERPT, len(val))
    np.testing.assert_array_equal(result.ids, val[: len(result.ids)])
    nats, count = stream_nats(load_checkpoint(path).model, val[:100], 1)
    short = inspect_text(path, limit=100, device="cpu")
    assert short.chars == count and np.nansum(short.nats) == pytest.approx(nats, abs=1e-5)


def quote_tracking_model(vocab: Vocab, unit: int = 3) -> CharLSTM:
    """Random 2-layer model, except: layer 0 unit 0 outputs +-0.76 for quote / not a quote,
    and layer 1 unit `unit` flips its cell between 0 and 1 at every quote, i.e. tracks
    "inside quotes" (gates: f = 0 and i = [cell was off] on a quote; f = 1, i = 0 otherwise)."""
    torch.manual_seed(0)
    H = 8
    cfg = ModelConfig(vocab_size=vocab.size, embed_size=4, hidden_size=H, num_layers=2, dropout=0)
    model = CharLSTM(cfg).eval()
    lstm = model.lstm
    rows = lambda u: [u, H + u, 2 * H + u, 3 * H + u]  # noqa: E731  (i, f, g, o)
    with torch.no_grad():
        model.embedding.weight[:, 0] = 0.0
        model.embedding.weight[vocab.chars.index('"'), 0] = 1.0
        i, f, g, o = rows(0)  # layer 0, unit 0: h = tanh(+-1)
        for w in (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0):
            w[rows(0)] = 0.0
        lstm.bias_ih_l0[i], lstm.bias_ih_l0[f], lstm.bias_ih_l0[o] = 10.0, -10.0, 10.0
        lstm.weight_ih_l0[g, 0], lstm.bias_ih_l0[g] = 20.0, -10.0
        i, f, g, o = rows(unit)  # layer 1: the quote tracker, input x0 = +-0.7616
        for w in (lstm.weight_ih_l1, lstm.weight_hh_l1, lstm.bias_ih_l1, lstm.bias_hh_l1):
            w[rows(unit)] = 0.0
        a = 1 / (2 * math.tanh(1.0))  # quote indicator q = a * x0 + 1/2
        lstm.weight_ih_l1[i, 0], lstm.bias_ih_l1[i] = 16 * a, 8.0 - 10.0
        lstm.weight_hh_l1[i, unit] = -16.0
        lstm.weight_ih_l1[f, 0], lstm.bias_ih_l1[f] = -20 * a, -10.0 + 10.0
        lstm.bias_ih_l1[g], lstm.bias_ih_l1[o] = 10.0, 10.0
    return model


def test_a_cell_planted_to_track_quotes_is_ranked_first(tmp_path, vocab):
    model = quote_tracking_model(vocab, unit=3)
    path = tmp_path / "quotes.pt"
    save_checkpoint(
        {"model_config": model.config.to_dict(), "model": model.state_dict(),
         "vocab": vocab.to_json()}, path)  # fmt: skip
    text = (QUOTED + 'a "b" cc "dd ee ff" g. ') * 4
    result = inspect_text(path, text, device="cpu")
    quotes = result.probe("in_quotes")
    best = quotes.best[0]
    assert (best.cell.layer, best.cell.unit) == (1, 3), quotes.best
    assert best.r > 0.99
    # the planted cell is on exactly inside quotes
    np.testing.assert_allclose(result.activation(Cell(1, 3, "c")), quotes.values, atol=0.01)
    assert quotes.corr.shape == (2, 2, 8)
    assert quotes.corr[0, 1, 3] > 0.99 and quotes.corr[1, 1, 3] > 0.99  # its c and its h
    others = np.abs(quotes.corr).ravel()
    assert np.sort(others)[-3] < 0.9  # and no other cell comes close


def test_text_properties_by_hand():
    text = 'Ab "cd" (x(y)) z)\n\nKING:\nGo "up'
    p = text_properties(list(text))
    at = {name: dict(zip(range(len(text)), v.tolist(), strict=True)) for name, v in p.items()}
    q = text.index('"')
    assert at["in_quotes"][q] == 1 and at["in_quotes"][q + 1] == 1
    assert at["in_quotes"][q + 3] == 0 and at["in_quotes"][q + 4] == 0  # closing quote: out
    assert at["in_quotes"][len(text) - 1] == 1  # an unclosed quote at the end
    depth = p["bracket_depth"].tolist()
    b = text.index("(")
    assert depth[b - 1 : b + 7] == [0, 1, 1, 2, 2, 1, 0, 0]
    assert depth[text.index(" z)") + 2] == 0  # a stray ")" does not go negative
    assert (p["in_brackets"] == (p["bracket_depth"] > 0)).all()
    assert p["line_position"].tolist()[:3] == [0, 1, 2]
    k = text.index("KING")
    assert at["line_position"][k] == 0 and at["line_position"][k + 4] == 4
    assert at["first_line"][k] == 1 and at["first_line"][k + 5] == 1  # its newline too
    assert at["first_line"][text.index("Go")] == 0 and at["first_line"][0] == 0
    assert at["caps_word"][k] == 1 and at["caps_word"][0] == 0  # "Ab" is not a word of caps
    assert at["word_start"][0] == 1 and at["word_start"][1] == 0
    assert at["word_position"][1] == 2 and at["word_position"][2] == 0
    assert at["vowel"][0] == 1 and at["vowel"][1] == 0
    assert all(v.dtype == np.float32 and len(v) == len(text) for v in p.values())


def test_comparison_against_a_second_checkpoint(ckpt_path, tmp_path, vocab, text_file):
    other = random_checkpoint(tmp_path / "b.pt", vocab, hidden_size=16, seed=1, scale=1.0)
    result = inspect_text(ckpt_path, file=text_file, against=other, device="cpu")
    alone = inspect_text(other, file=text_file, device="cpu")
    np.testing.assert_allclose(result.against.nats[1:], alone.nats[1:], atol=1e-6)
    delta = result.against.delta_bits(result.nats)
    np.testing.assert_allclose(delta[1:], (result.nats - alone.nats)[1:] / math.log(2), atol=1e-5)
    assert result.against.loss == pytest.approx(alone.loss, abs=1e-6)


def test_neuron_specs():
    assert parse_neuron("1:7", 2, 8) == [Cell(1, 7, "c"), Cell(1, 7, "h")]
    assert parse_neuron(" 0 : 3 : H ", 2, 8) == [Cell(0, 3, "h")]
    assert parse_neuron((1, 2), 2, 8) == [Cell(1, 2, "c"), Cell(1, 2, "h")]
    with pytest.raises(CharLSTMError, match="no layer 2.*layers 0-1 and units 0-7"):
        parse_neuron("2:0", 2, 8)
    with pytest.raises(CharLSTMError, match="no unit 8"):
        parse_neuron("0:8", 2, 8)
    with pytest.raises(CharLSTMError, match="not LAYER:UNIT"):
        parse_neuron("0-8", 2, 8)


def test_library_refuses_bad_texts(ckpt_path):
    with pytest.raises(CharLSTMError, match="empty"):
        inspect_text(ckpt_path, "", device="cpu")
    with pytest.raises(CharLSTMError, match="'Z' at 2"):
        inspect_text(ckpt_path, "abZ", device="cpu")
    skipped = inspect_text(ckpt_path, "abZcd", unknown="skip", device="cpu")
    assert skipped.text == "abcd" and skipped.skipped == 1
    with pytest.raises(CharLSTMError, match="50 characters, more than --limit 20"):
        inspect_text(ckpt_path, "a" * 50, limit=20, device="cpu")


def test_byte_level_shows_a_multibyte_character_once(tmp_path):
    path = random_checkpoint(tmp_path / "bytes.pt", Vocab.bytes(), hidden_size=8)
    result = inspect_text(path, "né 東", device="cpu")
    assert len(result.ids) == len("né 東".encode())
    assert result.tokens == ["n", "é", "", " ", "東", "", ""]
    assert result.text == "né 東"


def test_numbers_as_json(ckpt_path):
    result = inspect_text(ckpt_path, corpus_text(200), neurons=["1:2:h"], device="cpu")
    data = json.loads(json.dumps(to_dict(result)))
    assert data["bits"][0] is None and len(data["bits"]) == 200
    assert sum(data["bits"][1:]) / 199 == pytest.approx(result.bpc, abs=1e-3)
    assert len(data["top"][5]) == 5 and isinstance(data["top"][5][0][0], str)
    assert [p["name"] for p in data["probes"]][:2] == ["in_quotes", "in_brackets"]
    assert data["neurons"][0]["kind"] == "h" and len(data["neurons"][0]["values"]) == 200
    assert charlstm.inspect_text is inspect_text


# -- through the CLI ----------------------------------------------------------------------------
def cli(*args: object, input: str | None = None):
    return CliRunner().invoke(charlstm.cli.app.app, [str(a) for a in args], input=input)


def assert_one_line_error(result, *words: str, code: int = 1) -> None:
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_cli_surprisal_view(ckpt_path, text_file):
    result = cli("inspect", ckpt_path, text_file, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # the views are for humans: stderr
    assert "surprisal" in result.stderr and "most surprising" in result.stderr
    bpc = evaluate(ckpt_path, text=text_file, batch_size=1, device="cpu").bpc
    assert f"{bpc:.4f}" in result.stderr
    assert "\x1b[" not in result.stderr  # not a terminal: plain


def test_cli_neuron_and_compare_views(ckpt_path, tmp_path, vocab, text_file):
    result = cli("inspect", ckpt_path, "--prime", "the cat sat.", "--neuron", "1:5:c")
    assert result.exit_code == 0, result.stderr
    assert "c 1:5: cell state of unit 5 in layer 1" in result.stderr
    assert "cells that track the text" in result.stderr
    other = random_checkpoint(tmp_path / "o.pt", vocab, hidden_size=8, seed=2)
    compared = cli("inspect", ckpt_path, text_file, "--against", other)
    assert compared.exit_code == 0, compared.stderr
    assert "comparison with" in compared.stderr and "the other better on" in compared.stderr


def test_cli_json_and_stdin(ckpt_path):
    result = cli("inspect", ckpt_path, "-", "--json", input="the cat sat on the mat.\n")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["source"] == "stdin" and data["chars"] == len("the cat sat on the mat.\n") - 1
    assert "".join(data["tokens"]) == "the cat sat on the mat.\n"


def test_cli_html_is_written_and_never_overwritten_by_accident(ckpt_path, text_file, tmp_path):
    page = tmp_path / "page.html"
    result = cli("inspect", ckpt_path, text_file, "--html", page)
    assert result.exit_code == 0, result.stderr
    assert "wrote" in result.stderr and page.stat().st_size > 10_000
    assert "surprisal ─" not in result.stderr  # --html alone: no text views in the terminal
    page.write_text("my notes")
    again = cli("inspect", ckpt_path, text_file, "--html", page)
    assert_one_line_error(again, "already exists", "--force")
    assert page.read_text() == "my notes"
    forced = cli("inspect", ckpt_path, text_file, "--html", page, "--force")
    assert forced.exit_code == 0 and page.read_text().startswith("<!doctype html>")
    missing = cli("inspect", ckpt_path, text_file, "--html", tmp_path / "nope" / "p.html")
    assert_one_line_error(missing, "does not exist")
    folder = cli("inspect", ckpt_path, text_file, "--html", tmp_path)
    assert_one_line_error(folder, "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.html", "text.txt"]


@pytest.mark.parametrize(
    "case, words",
    [
        ("empty", ["empty"]),
        ("unknown", ["lacks", "'Z'", "--unknown skip"]),
        ("too long", ["more than --limit 100", "--limit 900"]),
        ("layer", ["no layer 5", "layers 0-1"]),
        ("unit", ["no unit 99", "units 0-23"]),
        ("spec", ["not LAYER:UNIT"]),
        ("vocabulary", ["--against", "another vocabulary"]),
        ("no other", ["--against: checkpoint not found"]),
        ("both", ["not both"]),
        ("compare", ["--against"]),
    ],
)
def test_cli_bad_inputs_one_line_nothing_written(case, words, ckpt_path, tmp_path, text_file):
    page = tmp_path / "out.html"
    args: list = ["inspect", ckpt_path, "--html", page]
    if case == "empty":
        (tmp_path / "empty.txt").write_text("")
        args.append(tmp_path / "empty.txt")
    elif case == "unknown":
        (tmp_path / "odd.txt").write_text("the cat Zapped")
        args.append(tmp_path / "odd.txt")
    elif case == "too long":
        args += [text_file, "--limit", "100"]
    elif case == "layer":
        args += [text_file, "--neuron", "5:0"]
    elif case == "unit":
        args += [text_file, "--neuron", "0:99"]
    elif case == "spec":
        args += [text_file, "--neuron", "first"]
    elif case == "vocabulary":
        other = random_checkpoint(tmp_path / "bytes.pt", Vocab.bytes(), hidden_size=8)
        args += [text_file, "--against", other]
    elif case == "no other":
        args += [text_file, "--against", tmp_path / "missing.pt"]
    elif case == "both":
        args += [text_file, "--prime", "the cat"]
    elif case == "compare":
        args += [text_file, "--view", "compare"]
    # a malformed or contradictory option is a usage error (2); the rest depend on the text
    # or the checkpoint (1)
    code = 2 if case in ("spec", "both", "compare") else 1
    assert_one_line_error(cli(*args), *words, code=code)
    assert not page.exists()


def test_cli_unknown_skip_inspects_the_rest(ckpt_path, tmp_path):
    odd = tmp_path / "odd.txt"
    odd.write_text("the cat Zoomed the mat")
    result = cli("inspect", ckpt_path, odd, "--unknown", "skip", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["skipped"] == 1 and "".join(data["tokens"]) == "the cat oomed the mat"


def test_pager_gets_the_coloured_views(ckpt_path, tmp_path, monkeypatch):
    from rich.console import Console

    import charlstm.cli.ui as ui

    paged = tmp_path / "paged.txt"
    monkeypatch.setenv("PAGER", f"sh -c 'cat > {paged}'")
    result = inspect_text(ckpt_path, "the cat sat.", device="cpu")
    terminal = Console(stderr=True, force_terminal=True, color_system="truecolor", width=100)
    monkeypatch.setattr(ui, "console", terminal)
    ui.show_inspection(result, ["surprisal"])
    content = paged.read_text()
    assert "most surprising" in content and "\x1b[" in content  # colours reach the pager

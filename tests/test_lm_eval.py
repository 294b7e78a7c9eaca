"""lm-eval end to end against `charlstm serve`, offline, with nothing configured but the README's
command: `--model local-completions --model_args model=RUN,base_url=.../v1/completions`, on a
small multiple-choice (loglikelihood) task written here, for a vocabulary with non-ASCII
characters, with text requests and with token-id requests at lm-eval's batch size 16. The
scores lm-eval records are checked against the model's own numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_server import CHARS, running_server
from tiny import random_checkpoint

from charlstm.data.vocab import Vocab
from charlstm.serving.server import serve_available

pytestmark = [
    pytest.mark.skipif(not serve_available(), reason="pip install 'charlstm[serve]'"),
    pytest.mark.slow,
]
pytest.importorskip("lm_eval", reason="lm-eval is not installed: pip install 'charlstm[clients]'")

DOCS = [
    {"context": "the cat sat on a", "choices": ["mat", "cat", "hat"], "answer": 0},
    {"context": "Café naïve —", "choices": ["東京", "the"], "answer": 1},
    {"context": "the", "choices": ["cat 😀", "sat"], "answer": 0},
]
TASK = """\
task: charlstm_tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    vocab = Vocab("char", "".join(sorted(set(CHARS + "h"))))
    path = tmp_path_factory.mktemp("runs") / "myrun" / "best.pt"
    path.parent.mkdir()
    return random_checkpoint(path, vocab, hidden_size=32, num_layers=2, seed=3, scale=2.0)


def continuation_logprob(ckpt: Path, context: str, continuation: str) -> float:
    from charlstm.model.checkpoint import load_checkpoint

    loaded = load_checkpoint(ckpt)
    ids = torch.from_numpy(loaded.vocab.encode(context + continuation))
    with torch.no_grad():
        logits, _ = loaded.model(ids[:, None])
    logp = torch.log_softmax(logits[:-1, 0].float(), -1).gather(1, ids[1:, None])[:, 0]
    return float(logp[len(context) - 1 :].sum())


@pytest.mark.parametrize("tokenized, batch_size", [(False, 1), (True, 16)])
def test_lm_eval_scores_a_local_task_with_the_readme_command(ckpt, tmp_path, tokenized, batch_size):
    (tmp_path / "tiny.jsonl").write_text(
        "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in DOCS), encoding="utf-8"
    )
    (tmp_path / "charlstm_tiny.yaml").write_text(TASK.format(data=tmp_path / "tiny.jsonl"))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    with running_server(ckpt, max_streams=64) as (url, _):
        args = f"model=myrun,base_url={url}/v1/completions,tokenized_requests={tokenized}"
        result = subprocess.run(
            [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args",
             args, "--tasks", "charlstm_tiny", "--include_path", str(tmp_path), "--batch_size",
             str(batch_size), "--output_path", str(tmp_path / "out"), "--log_samples"],
            capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Using remote tokenizer" in result.stderr  # found /tokenizer_info by itself
    (samples,) = (tmp_path / "out").rglob("samples_charlstm_tiny_*.jsonl")
    records = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines()]
    assert len(records) == len(DOCS)
    for record in records:
        doc = record["doc"]
        scores = [float(r[0][0]) for r in record["resps"]]
        expected = [continuation_logprob(ckpt, doc["context"], " " + c) for c in doc["choices"]]
        assert scores == pytest.approx(expected, abs=1e-4)
        best = max(range(len(scores)), key=scores.__getitem__)
        assert record["acc"] == float(best == doc["answer"])

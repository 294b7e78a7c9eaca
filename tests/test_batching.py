"""The batch scheduler without HTTP: streams join and leave a shared batch between steps, each
with its own options and RNG; greedy text equals `charlstm sample`'s, a seed reproduces a
text whatever runs beside it, stop sequences cut the text, cancel frees a slot at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import random_checkpoint

from charlstm.data.vocab import Vocab
from charlstm.errors import CharLSTMError, OptionError
from charlstm.generation.batching import (
    BatchScheduler,
    CapacityError,
    SamplingParams,
    Stream,
    sample_rows,
)
from charlstm.generation.sampling import filter_logits, generate

CHARS = "the cat sat on a mat.\nCafé naïve — 東京 😀!"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    vocab = Vocab("char", "".join(sorted(set(CHARS))))
    path = tmp_path_factory.mktemp("run") / "best.pt"
    return random_checkpoint(path, vocab, hidden_size=32, num_layers=2, seed=3, scale=2.0)


@pytest.fixture(scope="module")
def byte_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("byte") / "best.pt"
    return random_checkpoint(path, Vocab.bytes(), hidden_size=48, num_layers=1, seed=0)


def sampled(seed: int, max_tokens: int = 120, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=seed, **kw)


def test_one_greedy_stream_equals_charlstm_sample(ckpt, run_cli):
    result = run_cli("sample", ckpt, "--prime", "the cat", "--length", 200, "--temperature", 0)
    assert result.exit_code == 0, result.stderr
    expected = result.stdout[: -len("\n")]
    scheduler = BatchScheduler(ckpt)
    text = scheduler.generate("the cat", SamplingParams(max_tokens=200, temperature=0))[0]
    assert "the cat" + text == expected
    assert len(set(text)) > 10  # a varied text, so the comparison has teeth
    # no prompt: a newline as context, as `charlstm sample` does without --prime
    no_prime = run_cli("sample", ckpt, "--length", 50, "--temperature", 0).stdout[:-1]
    assert scheduler.generate("", SamplingParams(max_tokens=50, temperature=0))[0] == no_prime


def test_byte_level_greedy_equals_generate(byte_ckpt):
    prime = "Café 東京 😀 the"
    expected = generate(byte_ckpt, prime=prime, length=150, temperature=0)[0]
    text = BatchScheduler(byte_ckpt).generate(prime, SamplingParams(150, temperature=0))[0]
    assert prime + text == expected
    assert "\ufffd" in text  # partial UTF-8 is held back and decoded as generate does


def test_seed_reproduces_text_whatever_runs_beside_it(ckpt):
    scheduler = BatchScheduler(ckpt)
    alone = scheduler.generate("the", sampled(7))[0]
    assert scheduler.generate("the", sampled(7))[0] == alone
    assert scheduler.generate("the", sampled(8))[0] != alone
    # the same request in a crowd that joins and leaves around it
    others = [scheduler.submit("mat", sampled(s, max_tokens=30 + 10 * s)) for s in range(3)]
    scheduler.step()
    scheduler.step()
    mine = scheduler.submit("the", sampled(7))[0]
    scheduler.step()
    late = scheduler.submit("a cat", SamplingParams(max_tokens=300, temperature=0.5))
    scheduler.run_until_done([mine])
    assert mine.text == alone
    assert all(s.done for group in others for s in group)  # they left while it ran
    assert not late[0].done
    scheduler.run_until_done()


def test_n_streams_of_one_seed_differ_and_reproduce(ckpt):
    scheduler = BatchScheduler(ckpt)
    texts = scheduler.generate("the", sampled(3), n=3)
    assert len(set(texts)) == 3
    assert scheduler.generate("the", sampled(3), n=3) == texts
    assert scheduler.generate("the", sampled(3), n=1)[0] == texts[0]


def test_streams_join_and_leave_the_batch(ckpt):
    scheduler = BatchScheduler(ckpt)
    short = scheduler.submit("the", SamplingParams(max_tokens=3, temperature=0))[0]
    long = scheduler.submit("cat", SamplingParams(max_tokens=10, temperature=0), n=2)
    assert scheduler.active == 3
    sizes = []
    while scheduler.active:
        scheduler.step()
        sizes.append(scheduler.batch.step.batch_size)
    assert sizes[0] == 3 and sizes[-1] == 0  # all three rows, then none
    assert 2 in sizes  # `short` left after its 3 characters, the other two stayed
    assert short.tokens == 3 and short.finish_reason == "length"
    assert [s.tokens for s in long] == [10, 10]
    assert long[0].text == long[1].text  # greedy: the same prompt gives the same text


def test_per_stream_temperature_top_k_top_p(ckpt):
    """Rows with different options in one batch: top-k 1 and a tiny top-p are greedy even at
    temperature 1, whatever the hot row beside them does."""
    scheduler = BatchScheduler(ckpt)
    greedy = scheduler.generate("the", SamplingParams(max_tokens=80, temperature=0))[0]
    rows = [
        scheduler.submit("the", SamplingParams(max_tokens=80, temperature=1.0, top_k=1))[0],
        scheduler.submit("the", SamplingParams(max_tokens=80, temperature=1.0, top_p=1e-6))[0],
        scheduler.submit("the", SamplingParams(max_tokens=80, temperature=5.0, seed=1))[0],
    ]
    scheduler.run_until_done()
    assert rows[0].text == greedy and rows[1].text == greedy
    assert rows[2].text != greedy


def test_sample_rows_draws_from_filter_logits_distribution():
    """Stratified uniforms through the inverse CDF hit each symbol in proportion to its
    probability: the per-row filtering matches `filter_logits` row by row."""
    torch.manual_seed(0)
    logits = torch.randn(4, 12) * 2
    options = [(1.0, 0, 1.0), (0.7, 3, 1.0), (1.3, 0, 0.8), (0.5, 5, 0.6)]
    N = 20000
    u = (torch.arange(N, dtype=torch.float32) + 0.5) / N
    for row, (t, k, p) in enumerate(options):
        ids = sample_rows(
            logits[row].expand(N, -1),
            torch.full((N,), t),
            torch.full((N,), k, dtype=torch.long),
            torch.full((N,), p),
            u,
        )
        counts = np.bincount(ids, minlength=12) / N
        expected = filter_logits(logits[row : row + 1], t, k, p)[0].numpy()
        assert np.allclose(counts, expected, atol=2e-4), (row, counts, expected)
    greedy = sample_rows(logits, torch.zeros(4), torch.zeros(4, dtype=torch.long),
                         torch.ones(4), torch.rand(4))  # fmt: skip
    assert np.array_equal(greedy, logits.argmax(-1).numpy())


def test_stop_sequence_ends_the_text_before_it(ckpt):
    scheduler = BatchScheduler(ckpt)
    greedy = scheduler.generate("the", SamplingParams(max_tokens=200, temperature=0))[0]
    stop = greedy[40:43]
    cut = greedy.index(stop)
    params = SamplingParams(max_tokens=200, temperature=0, stop=("zzz", stop))
    stream = scheduler.submit("the", params)[0]
    pieces = []
    while not stream.done:
        pieces += [e.text for e in scheduler.step() if e.stream is stream]
    assert stream.text == "".join(pieces) == greedy[:cut]
    assert stream.finish_reason == "stop"
    assert stop not in stream.text


def test_stream_holds_back_a_possible_stop_and_releases_it():
    s = Stream("r", 0, np.zeros(0), SamplingParams(max_tokens=6, stop=("abc",)),
               np.zeros(6, np.float32), str)  # fmt: skip
    assert s.advance("x") == ("x", None)
    assert s.advance("a") == ("", None)  # could be the start of "abc"
    assert s.advance("b") == ("", None)
    assert s.advance("d") == ("abd", None)  # it was not
    assert s.advance("a") == ("", None)
    assert s.advance("b") == ("ab", "length")  # the text ends: what was held comes out
    assert s.text == "xabdab"
    t = Stream("r", 0, np.zeros(0), SamplingParams(max_tokens=9, stop=("\n\n",)),
               np.zeros(9, np.float32), str)  # fmt: skip
    assert [t.advance(c) for c in "ab\n"] == [("a", None), ("b", None), ("", None)]
    assert t.advance("\n") == ("", "stop")
    assert t.text == "ab"


def test_max_tokens_zero_finishes_at_once(ckpt):
    scheduler = BatchScheduler(ckpt)
    stream = scheduler.submit("the", SamplingParams(max_tokens=0))[0]
    events = scheduler.step()
    assert [(e.text, e.finish_reason) for e in events] == [("", "length")]
    assert stream.text == "" and scheduler.active == 0


def test_cancel_frees_the_slot_at_once_and_capacity_is_enforced(ckpt):
    scheduler = BatchScheduler(ckpt, max_streams=3)
    a = scheduler.submit("the", SamplingParams(max_tokens=100), n=2)
    with pytest.raises(CapacityError, match="2 of 3 streams are running"):
        scheduler.submit("the", SamplingParams(max_tokens=100), n=2)
    scheduler.step()
    scheduler.cancel(a[0])
    assert scheduler.active == 1  # before any step
    b = scheduler.submit("cat", SamplingParams(max_tokens=5), n=2)
    scheduler.step()
    assert scheduler.batch.step.batch_size == 3  # a[0]'s row left, b's two joined
    assert a[0].finish_reason == "cancelled" and a[0].tokens == 1
    scheduler.cancel(a[1])
    scheduler.run_until_done(b)
    assert scheduler.active == 0 and all(s.finish_reason == "length" for s in b)


def test_bad_options_and_prompts_are_refused(ckpt):
    scheduler = BatchScheduler(ckpt)
    for bad, field in [
        (SamplingParams(temperature=-1), "temperature"),
        (SamplingParams(top_k=-2), "top_k"),
        (SamplingParams(top_p=0), "top_p"),
        (SamplingParams(max_tokens=-1), "max_tokens"),
        (SamplingParams(seed=-5), "seed"),
        (SamplingParams(stop=("",)), "stop"),
        (SamplingParams(temperature=float("nan")), "temperature"),
    ]:
        assert bad.problem()[0] == field
        with pytest.raises(OptionError, match=field):
            scheduler.submit("the", bad)
    with pytest.raises(CharLSTMError, match="the prompt has 2 character.*'x' at 0"):
        scheduler.submit("xthe q", SamplingParams())
    with pytest.raises(OptionError, match="dtype"):
        BatchScheduler(ckpt, dtype="fp8")
    assert scheduler.active == 0


def test_worker_thread_delivers_every_event(ckpt):
    received = []
    done = threading.Event()

    def listener(events):
        received.extend(events)
        if sum(e.finish_reason is not None for e in received) == 4:
            done.set()

    scheduler = BatchScheduler(ckpt, listener=listener)
    scheduler.start()
    try:
        streams = scheduler.submit("the", sampled(1, max_tokens=50), n=3)
        streams += scheduler.submit("cat", SamplingParams(max_tokens=20, temperature=0))
        assert done.wait(30)
        assert scheduler.error is None, scheduler.error
    finally:
        scheduler.close()
    for s in streams:
        assert "".join(e.text for e in received if e.stream is s) == s.text
        assert s.finish_reason == "length"
    reference = BatchScheduler(ckpt).generate("the", sampled(1, max_tokens=50), n=3)
    assert [s.text for s in streams[:3]] == reference


def test_bf16_scheduler_runs(ckpt):
    scheduler = BatchScheduler(ckpt, dtype="bf16")
    texts = scheduler.generate("the", SamplingParams(max_tokens=30, temperature=0), n=2)
    assert len(texts[0]) == 30 and texts[0] == texts[1]


def test_logprobs_of_generated_and_prompt_tokens_are_the_models(ckpt):
    """A stream keeps each sampled token's log-probability under the model's own distribution
    (temperature 1, unfiltered), whatever it was sampled with, and the prompt's from its pass."""
    from charlstm.model.checkpoint import load_checkpoint

    scheduler = BatchScheduler(ckpt)
    prompt = "the cat"
    params = SamplingParams(max_tokens=30, temperature=0.7, top_k=3, seed=2, logprobs=3,
                            prompt_logprobs=2)  # fmt: skip
    (stream,) = scheduler.submit(prompt, params)
    scheduler.run_until_done([stream])
    loaded = load_checkpoint(ckpt)
    ids = torch.from_numpy(loaded.vocab.encode(prompt + stream.text))
    with torch.no_grad():
        logits, _ = loaded.model(ids[:, None])
    logp = torch.log_softmax(logits[:-1, 0].float(), -1)
    expected = logp.gather(1, ids[1:, None])[:, 0]
    scores = stream.logprobs
    assert scores.ids == ids[len(prompt) :].tolist() and scores.ends == list(range(1, 31))
    assert torch.allclose(torch.tensor(scores.logprobs), expected[len(prompt) - 1 :], atol=1e-4)
    assert all(len(top) == 3 for top in scores.top_ids)
    first = stream.prompt_logprobs
    assert first.logprobs[0] is None and first.ids == ids[: len(prompt)].tolist()
    assert torch.allclose(torch.tensor(first.logprobs[1:]), expected[: len(prompt) - 1], atol=1e-5)
    assert [len(top) for top in first.top_ids[1:]] == [2] * (len(prompt) - 1)
    # without logprobs nothing is kept; out of range is refused
    (plain,) = scheduler.submit(prompt, SamplingParams(max_tokens=3))
    scheduler.run_until_done([plain])
    assert plain.logprobs is None and plain.prompt_logprobs is None
    with pytest.raises(OptionError, match="logprobs must be an integer from 0 to 20"):
        scheduler.submit(prompt, SamplingParams(logprobs=21))


def test_text_ends_count_characters_of_utf8_bytes():
    from charlstm.generation.logprobs import TokenLogprobs, text_ends

    ids = np.frombuffer("aé東!".encode(), dtype=np.uint8).astype(np.int64)
    ends = text_ends(ids, "byte")
    assert ends == [1, 1, 2, 2, 2, 3, 4]
    assert text_ends(np.arange(3), "char") == [1, 2, 3]
    scores = TokenLogprobs(list(ids), [0.0] * 7, [[]] * 7, [[]] * 7, ends)
    assert [scores.covering(n) for n in range(5)] == [0, 1, 3, 6, 7]


def test_a_failing_row_ends_alone(ckpt):
    """#35: one stream's failure (its decoding raises; its prompt holds an id the model does
    not have) ends that stream with "error" and a reason; the rest of the batch goes on."""
    scheduler = BatchScheduler(ckpt)
    heard = []
    scheduler.on_error = lambda stream, error: heard.append((stream, error))
    good = scheduler.submit("the", sampled(1, max_tokens=60), n=2)
    reference = BatchScheduler(ckpt).generate("the", sampled(1, max_tokens=60), n=2)
    scheduler.step()
    scheduler.step()
    bad = scheduler.submit("cat", sampled(2, max_tokens=60))[0]

    def broken(ids):
        raise ValueError("a decoder bug")

    bad.decode = broken
    bad_prompt = scheduler.submit(np.array([1, 10**6]), sampled(3, max_tokens=60))[0]
    scheduler.run_until_done()
    assert [s.finish_reason for s in good] == ["length", "length"]
    assert [s.text for s in good] == reference
    assert bad.finish_reason == bad_prompt.finish_reason == "error"
    assert "a decoder bug" in bad.error and "IndexError" in bad_prompt.error
    assert {id(s) for s, _ in heard} == {id(bad), id(bad_prompt)}
    assert scheduler.active == 0


def test_sampling_options_beyond_range_are_bounded_per_row(ckpt):
    """A top_k far beyond the vocabulary (10**30 overflowed torch's int64 inside the worker)
    is "off", and a temperature too small for float32 is greedy; rows beside them are
    unchanged."""
    scheduler = BatchScheduler(ckpt)
    greedy = scheduler.generate("the", SamplingParams(max_tokens=40, temperature=0))[0]
    huge_k = scheduler.submit("the", sampled(4, max_tokens=40, top_k=10**30))[0]
    tiny_t = scheduler.submit("the", SamplingParams(max_tokens=40, temperature=1e-30))[0]
    plain = scheduler.submit("the", sampled(4, max_tokens=40))[0]
    scheduler.run_until_done()
    assert huge_k.text == plain.text and huge_k.finish_reason == "length"
    assert tiny_t.text == greedy
    assert scheduler.error is None


def test_uniforms_drawn_in_chunks_equal_one_draw(ckpt):
    """A stream's randomness comes in chunks (a max_tokens of a million allocates nothing up
    front), and the numbers are those of a single draw."""
    stream = BatchScheduler(ckpt).submit("the", sampled(9, max_tokens=10**6))[0]
    drawn = []
    for _ in range(600):
        drawn.append(stream.next_uniform())
        assert stream.next_uniform() == drawn[-1]  # asking again gives the same number
        stream.tokens += 1
    expected = np.random.default_rng([9, 0]).random(600, dtype=np.float32)
    assert np.array_equal(np.array(drawn, np.float32), expected)


def test_the_worker_times_its_thread_counts_or_applies_the_one_given(ckpt):
    """#36: `serve --threads 0` chooses the worker's threads by timing its rounds (torch's
    count is per thread, so it is set on the worker itself); `--threads N` applies N there."""
    from charlstm.runtime import thread_candidates

    seen = []
    fixed = BatchScheduler(ckpt, threads=1, listener=lambda _: seen.append(torch.get_num_threads()))
    fixed.start()
    try:
        stream = fixed.submit("the", sampled(1, max_tokens=50))[0]
        while not stream.done:
            time.sleep(0.01)
    finally:
        fixed.close()
    assert seen and set(seen) == {1}

    chosen = []
    timed = BatchScheduler(ckpt, threads=0)
    timed.on_threads = lambda tuner: chosen.append(dict(tuner.rates))
    timed.start()
    try:
        stream = timed.submit("the", sampled(2, max_tokens=10**6))[0]
        deadline = time.monotonic() + 60
        while not chosen and time.monotonic() < deadline and len(thread_candidates()) > 1:
            time.sleep(0.05)
        timed.cancel(stream)
    finally:
        timed.close()
    if len(thread_candidates()) > 1:  # one core: nothing to choose between
        assert set(chosen[0]) == set(thread_candidates()) and min(chosen[0].values()) > 0
    assert timed.error is None

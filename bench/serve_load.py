"""Load test of `charlstm serve` with the official `openai` client: what batching buys, and what
the HTTP side costs against `charlstm sample` (docs/serve.md's figures, issue #34 item 4).

    python bench/serve_load.py                          # random-weights 2x512 model, ~2 min
    python bench/serve_load.py --checkpoint run/best.pt --clients 32

Starts `charlstm serve` in a child process on a free loopback port and, in this process,
--rounds times (so that a change in the machine's load hits both sides of each ratio):

1. `charlstm sample`'s own speed, through the library it runs (`generation.sampling.generate`,
   the same torch threads as the server): one sample of --max-tokens characters after
   `KING:` at temperature 1;
2. one stream of the official `openai` client, the same request;
3. `charlstm sample --num-samples` --clients, the same way;
4. --clients concurrent streams (`AsyncOpenAI`), each --max-tokens characters;

(1 and 2 in the order A B B A, the mean of each pair its round's figure), then the
first-character latency: while --clients - 1 streams run, --probes new requests
arrive one after another; the time from sending each to its first character (p50, p99).
Each ratio is the median of the rounds' ratios.

Targets (issue #34): 32 streams >= 4x one stream's characters/s and >= 70 % of
`charlstm sample --num-samples 32`; one stream within 10 % of `charlstm sample`. The CPU is
shared, so the ratios within one run are the figures to read, not the absolute rates. Bounded:
each phase has a deadline and the whole run gives up after 10 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "KING:"


def random_small_checkpoint(folder: Path) -> Path:
    """A `small`-preset model (2 x LSTM(512), embedding 128) with random weights over tiny
    shakespeare's characters: the speed of a trained one, not its text."""
    import torch

    from charlstm.config import PRESETS, ModelConfig
    from charlstm.data.corpus import bundled_corpus
    from charlstm.data.vocab import Vocab
    from charlstm.model.checkpoint import save_checkpoint
    from charlstm.model.network import CharLSTM

    text = Path(bundled_corpus()).read_text(encoding="utf-8")
    vocab = Vocab("char", "".join(sorted(set(text))))
    small = PRESETS["small"]
    config = ModelConfig(vocab_size=vocab.size, embed_size=small["embed_size"],
                         hidden_size=small["hidden_size"], num_layers=small["num_layers"],
                         dropout=0.0)  # fmt: skip
    torch.manual_seed(0)
    path = folder / "small-random" / "best.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model_config": config.to_dict(), "model": CharLSTM(config).state_dict(),
               "vocab": vocab.to_json()}  # fmt: skip
    save_checkpoint(payload, path)
    return path


def sample_speed(checkpoint: Path, length: int, num_samples: int, threads: int) -> float:
    """Characters/s of `charlstm sample CKPT --prime KING: --length L --temperature 1
    --num-samples N --threads T`, timed around the library call it makes (no process
    start-up)."""
    from charlstm.generation.sampling import generate
    from charlstm.model.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(checkpoint)  # loaded before the clock starts
    generate(checkpoint, prime=PROMPT, length=20, temperature=1.0, num_samples=num_samples,
             threads=threads)  # fmt: skip
    t0 = time.perf_counter()
    texts = generate(checkpoint, prime=PROMPT, length=length, temperature=1.0,
                     num_samples=num_samples, on_text=lambda _i, _piece: None,
                     threads=threads)  # fmt: skip
    elapsed = time.perf_counter() - t0
    return sum(len(t) - len(PROMPT) for t in texts) / elapsed


async def one_stream(client, body: dict, seed: int) -> tuple[float | None, int]:
    """One streaming completion with the openai client: (seconds to the first character,
    characters)."""
    t0 = time.perf_counter()
    first, chars = None, 0
    stream = await client.completions.create(**body, seed=seed, stream=True)
    async for chunk in stream:
        n = sum(len(c.text) for c in chunk.choices)
        if n and first is None:
            first = time.perf_counter() - t0
        chars += n
    return first, chars


async def stream_speed(client, body: dict, seed: int) -> float:
    """Characters/s of one streaming completion, from the request to its last character."""
    t0 = time.perf_counter()
    chars = (await one_stream(client, body, seed))[1]
    return chars / (time.perf_counter() - t0)


async def concurrent(client, body: dict, clients: int, rounds: int) -> float:
    """Aggregate characters/s of `clients` streams at once, `rounds` times."""
    t0 = time.perf_counter()
    total = 0
    for r in range(rounds):
        done = await asyncio.gather(*(one_stream(client, body, r * clients + i)
                                      for i in range(clients)))  # fmt: skip
        total += sum(chars for _, chars in done)
    return total / (time.perf_counter() - t0)


async def first_char_latency(client, body: dict, background: int, probes: int) -> list[float]:
    """First-character times of `probes` requests made while `background` streams run."""
    stop = asyncio.Event()

    async def busy(i: int) -> None:
        while not stop.is_set():
            await one_stream(client, body, 1000 + i)

    tasks = [asyncio.ensure_future(busy(i)) for i in range(background)]
    await asyncio.sleep(2.0)  # let them all join
    times = []
    for i in range(probes):
        first, _ = await one_stream(client, {**body, "max_tokens": 2}, i)
        times.append(first)
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait(tasks, timeout=120)
    return times


def prompt_forward_s(checkpoint: Path, prompt: str, repeats: int = 10) -> float:
    """Median time of one forward pass over the prompt (as the server runs it on joining)."""
    import torch

    from charlstm.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    ids = torch.from_numpy(ckpt.vocab.encode(prompt))[:, None]
    times = []
    with torch.no_grad():
        for _ in range(repeats + 2):
            t = time.perf_counter()
            ckpt.model(ids)
            times.append(time.perf_counter() - t)
    return statistics.median(times[2:])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="default: a random-weights 2x512 model")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=1000, help="per request")
    parser.add_argument("--rounds", type=int, default=3, help="of the four measurements")
    parser.add_argument("--probes", type=int, default=20, help="first-character requests")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (server, sample)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    import torch
    from openai import AsyncOpenAI

    torch.set_num_threads(args.threads)
    scratch = tempfile.TemporaryDirectory(prefix="charlstm-serve-load-")
    checkpoint = args.checkpoint or random_small_checkpoint(Path(scratch.name))
    model = checkpoint.resolve().parent.name
    env = {k: v for k, v in os.environ.items() if k != "CHARLSTM_API_KEY"}  # no key needed
    proc = subprocess.Popen(
        [sys.executable, "-m", "charlstm", "serve", str(checkpoint), "--port", "0", "--quiet",
         "--max-streams", str(args.clients + 8), "--max-tokens", str(args.max_tokens),
         "--threads", str(args.threads)],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        line = proc.stderr.readline()
        found = re.search(r"serving (http://127\.0\.0\.1:\d+)", line)
        if not found:
            raise SystemExit(f"the server did not start: {line}{proc.stderr.read()}")
        body = {"model": model, "prompt": PROMPT, "max_tokens": args.max_tokens,
                "temperature": 1.0}  # fmt: skip

        async def run() -> dict:
            rounds = []
            async with AsyncOpenAI(base_url=found.group(1) + "/v1", api_key="unused",
                                   max_retries=0, timeout=120) as client:  # fmt: skip
                await one_stream(client, {**body, "max_tokens": 20}, 0)  # warm-up
                for r in range(args.rounds):
                    # one stream against `sample`, A B B A: a load that changes within the
                    # round weighs on both alike
                    sample_a = sample_speed(checkpoint, args.max_tokens, 1, args.threads)
                    one_a = await stream_speed(client, body, 2 * r)
                    one_b = await stream_speed(client, body, 2 * r + 1)
                    sample_b = sample_speed(checkpoint, args.max_tokens, 1, args.threads)
                    sample_one, one = (sample_a + sample_b) / 2, (one_a + one_b) / 2
                    sample_many = sample_speed(checkpoint, args.max_tokens, args.clients,
                                               args.threads)  # fmt: skip
                    many = await concurrent(client, body, args.clients, 1)
                    rounds.append((sample_one, one, sample_many, many))
                firsts = await first_char_latency(client, body, args.clients - 1, args.probes)
            return {"rounds": rounds, "firsts": firsts}

        figures = asyncio.run(asyncio.wait_for(run(), 600))
    finally:
        proc.terminate()
        proc.wait(30)
    prime_s = prompt_forward_s(checkpoint, PROMPT)
    firsts = figures["firsts"]
    rounds = figures["rounds"]

    def median(f) -> float:
        return statistics.median(f(*r) for r in rounds)

    result = {
        "model": model,
        "clients": args.clients,
        "threads": args.threads,
        "rounds": len(rounds),
        "sample_1_chars_per_s": round(median(lambda s1, o, sn, m: s1)),
        "sample_many_chars_per_s": round(median(lambda s1, o, sn, m: sn)),
        "one_stream_chars_per_s": round(median(lambda s1, o, sn, m: o)),
        "many_streams_chars_per_s": round(median(lambda s1, o, sn, m: m)),
        "many_over_one": round(median(lambda s1, o, sn, m: m / o), 2),
        "many_over_sample_many": round(median(lambda s1, o, sn, m: m / sn), 2),
        "one_over_sample_1": round(median(lambda s1, o, sn, m: o / s1), 2),
        "each_round": [[round(x) for x in r] for r in rounds],
        "first_char_ms_p50": round(1000 * percentile(firsts, 50), 1),
        "first_char_ms_p99": round(1000 * percentile(firsts, 99), 1),
        "probes": len(firsts),
        "prompt_forward_ms": round(1000 * prime_s, 2),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    r, n = result, args.clients
    print(f"model {model}, prompt {PROMPT!r}, {args.max_tokens} characters per request at "
          f"temperature 1, {args.threads} torch thread(s), the official openai client")  # fmt: skip
    print(f"charlstm sample:                  {r['sample_1_chars_per_s']:>8,} chars/s")
    print(f"charlstm sample --num-samples {n}: {r['sample_many_chars_per_s']:>8,} chars/s")
    print(f"1 stream:                         {r['one_stream_chars_per_s']:>8,} chars/s  "
          f"({r['one_over_sample_1']:.2f}x charlstm sample; target >= 0.90)")  # fmt: skip
    print(f"{n} streams at once, aggregate:    {r['many_streams_chars_per_s']:>8,} chars/s  "
          f"({r['many_over_one']:.2f}x one stream, target >= 4; "
          f"{r['many_over_sample_many']:.2f}x sample --num-samples {n}, "
          "target >= 0.70)")  # fmt: skip
    print(f"first character with {n - 1} streams running ({len(firsts)} requests): "
          f"p50 {r['first_char_ms_p50']} ms, p99 {r['first_char_ms_p99']} ms "
          f"(the prompt's forward pass: {r['prompt_forward_ms']} ms)")  # fmt: skip


if __name__ == "__main__":
    main()

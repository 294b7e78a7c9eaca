"""Load test of `charlstm serve` on 127.0.0.1: what batching buys (docs/serve.md's figures).

    python bench/serve_load.py                          # random-weights `small` model, ~1 min
    python bench/serve_load.py --checkpoint run/best.pt --clients 32 --seconds 8

Starts `charlstm serve` in a child process on a free loopback port, then, in this process,
drives it with streaming requests over raw asyncio sockets (a client as light as can be, since
it shares the CPU with the server):

1. one client, streaming back to back for --seconds: its characters/s;
2. --clients concurrent clients, the same: their aggregate characters/s, and the ratio to 1;
3. first-character latency: while --clients - 1 streams run, --probes new requests arrive one
   after another; the time from sending each to its first character (p50, p99), against one
   step's time at that load (seconds per character of one stream) plus the prompt's forward
   pass (timed in this process, same threads, on the same prompt).

Bounded: every phase stops at its deadline, each request asks --max-tokens characters, and the
whole run gives up after 5 minutes. The CPU is shared, so the ratios within one run are the
figures to read, not the absolute rates.
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

PROMPT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. "
    "resolved.\n\nFirst Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.\n"
)


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


async def stream_request(port: int, body: dict, on_text=None) -> tuple[float | None, int]:
    """POST one streaming completion; (seconds to the first character, characters)."""
    payload = json.dumps(body).encode()
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(payload) + payload
    )
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        rest = await reader.read()
        raise RuntimeError(f"{status.decode().strip()}: {rest[-300:].decode(errors='replace')}")
    first, chars = None, 0
    while True:
        line = await reader.readline()
        if not line:
            break
        if line.startswith(b"data: {"):
            n = sum(len(c["text"]) for c in json.loads(line[6:])["choices"])
            if n:
                if first is None:
                    first = time.perf_counter() - t0
                chars += n
                if on_text is not None:
                    on_text(n)
        elif line.startswith(b"data: [DONE]"):
            break
    writer.close()
    return first, chars


async def throughput(port: int, body: dict, clients: int, seconds: float) -> float:
    """Aggregate characters/s of `clients` streaming back to back for `seconds`."""
    counted = [0]
    deadline = time.perf_counter() + seconds

    def count(n: int) -> None:
        if time.perf_counter() < deadline:
            counted[0] += n

    async def client(i: int) -> None:
        while time.perf_counter() < deadline:
            await stream_request(port, {**body, "seed": i}, count)

    tasks = [asyncio.ensure_future(client(i)) for i in range(clients)]
    await asyncio.sleep(0)
    counted[0] = 0
    t0 = time.perf_counter()
    await asyncio.wait(tasks, timeout=seconds + 120)
    elapsed = min(time.perf_counter(), deadline) - t0
    for task in tasks:
        task.cancel()
    return counted[0] / elapsed


async def first_char_latency(
    port: int, body: dict, background: int, probes: int, seconds: float
) -> tuple[list[float], float]:
    """First-character times of `probes` requests made while `background` streams run, and
    the background streams' characters/s per stream meanwhile."""
    stop = asyncio.Event()
    counted = [0]

    async def busy(i: int) -> None:
        while not stop.is_set():
            await stream_request(port, {**body, "seed": 1000 + i},
                                 lambda n: counted.__setitem__(0, counted[0] + n))  # fmt: skip

    tasks = [asyncio.ensure_future(busy(i)) for i in range(background)]
    await asyncio.sleep(min(2.0, seconds / 4))  # let them all join
    counted[0] = 0
    t0 = time.perf_counter()
    times = []
    deadline = t0 + seconds
    for i in range(probes):
        if time.perf_counter() > deadline:
            break
        first, _ = await stream_request(port, {**body, "max_tokens": 2, "seed": i})
        times.append(first)
        await asyncio.sleep(0.05)
    per_stream = counted[0] / (time.perf_counter() - t0) / max(background, 1)
    stop.set()
    await asyncio.wait(tasks, timeout=120)
    return times, per_stream


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
    parser.add_argument("--checkpoint", type=Path, help="default: a random-weights small model")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0, help="per throughput phase")
    parser.add_argument("--max-tokens", type=int, default=1000, help="per request")
    parser.add_argument("--probes", type=int, default=40, help="first-character requests")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    scratch = tempfile.TemporaryDirectory(prefix="charlstm-serve-load-")
    checkpoint = args.checkpoint or random_small_checkpoint(Path(scratch.name))
    model = "small-random" if args.checkpoint is None else checkpoint.resolve().parent.name
    env = {k: v for k, v in os.environ.items() if k != "CHARLSTM_API_KEY"}  # no key needed
    proc = subprocess.Popen(
        [sys.executable, "-m", "charlstm", "serve", str(checkpoint), "--port", "0",
         "--max-streams", str(args.clients + 8), "--max-tokens", str(args.max_tokens),
         "--threads", str(args.threads)],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        line = proc.stderr.readline()
        found = re.search(r"serving http://127\.0\.0\.1:(\d+)", line)
        if not found:
            raise SystemExit(f"the server did not start: {line}{proc.stderr.read()}")
        port = int(found.group(1))
        body = {"model": model, "prompt": PROMPT, "max_tokens": args.max_tokens,
                "temperature": 0.8, "stream": True}  # fmt: skip

        async def run() -> dict:
            await stream_request(port, {**body, "max_tokens": 20})  # warm-up
            one = await throughput(port, body, 1, args.seconds)
            many = await throughput(port, body, args.clients, args.seconds)
            firsts, per_stream = await first_char_latency(
                port, body, args.clients - 1, args.probes, 60
            )
            return {"one": one, "many": many, "firsts": firsts, "per_stream": per_stream}

        figures = asyncio.run(asyncio.wait_for(run(), 300))
    finally:
        proc.terminate()
        proc.wait(30)
    import torch

    torch.set_num_threads(args.threads)  # the forward pass as the server runs it
    prime_s = prompt_forward_s(checkpoint, PROMPT)
    step_s = 1 / figures["per_stream"]
    firsts = figures["firsts"]
    result = {
        "model": model,
        "clients": args.clients,
        "one_client_chars_per_s": round(figures["one"]),
        "many_clients_chars_per_s": round(figures["many"]),
        "ratio": round(figures["many"] / figures["one"], 2),
        "first_char_ms_p50": round(1000 * percentile(firsts, 50), 1),
        "first_char_ms_p99": round(1000 * percentile(firsts, 99), 1),
        "probes": len(firsts),
        "step_ms_at_load": round(1000 * step_s, 2),
        "prompt_forward_ms": round(1000 * prime_s, 2),
        "prompt_chars": len(PROMPT),
        "threads": args.threads,
    }
    bound = result["step_ms_at_load"] + result["prompt_forward_ms"]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"model {model}, prompt {len(PROMPT)} characters, {args.max_tokens} per request, "
          f"server with {args.threads} torch thread(s)")  # fmt: skip
    print(f"1 client:          {result['one_client_chars_per_s']:>8,} chars/s")
    print(f"{args.clients} clients:        {result['many_clients_chars_per_s']:>8,} chars/s "
          f"aggregate  ({result['ratio']:.2f}x one client; target >= 4x)")  # fmt: skip
    p50, p99 = result["first_char_ms_p50"], result["first_char_ms_p99"]
    print(f"first character with {args.clients - 1} streams running ({len(firsts)} requests): "
          f"p50 {p50} ms, p99 {p99} ms")  # fmt: skip
    print(f"  one step at that load {result['step_ms_at_load']} ms + the prompt's forward pass "
          f"{result['prompt_forward_ms']} ms = {bound:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()

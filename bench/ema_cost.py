"""What `--ema` costs a training step: the average's update (one fused lerp over every
parameter) timed against a whole `small` training step (forward, backward, clip, AdamW) of the
same model in the same process, and the copy in and out around a validation.

    OMP_NUM_THREADS=1 python bench/ema_cost.py [--preset small] [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from charlstm.config import resolve_config
from charlstm.training.build import build_model, build_optimizer
from charlstm.training.ema import WeightAverage


def best_of(fn, repeats: int) -> float:
    """The fastest of `repeats` calls, in seconds (the machine is shared: the minimum is the
    figure least disturbed by the other jobs)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--vocab", type=int, default=65)
    args = parser.parse_args()
    cfg = resolve_config(args.preset, device="cpu")
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(cfg.model_config(args.vocab), cfg.precision, device)
    optimizer = build_optimizer(model, cfg, device)
    window = torch.randint(0, args.vocab, (cfg.bptt + 1, cfg.batch_size))
    state = model.init_state(cfg.batch_size, device, torch.float32)

    def step() -> None:
        logits, _ = model(window[:-1], state)
        loss = F.cross_entropy(logits.float().reshape(-1, args.vocab), window[1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        optimizer.step()

    average = WeightAverage(model, 0.999)

    def apply_and_restore() -> None:
        with average.applied():
            pass

    step()  # warm up the allocator and kernels
    step_s = best_of(step, args.steps)
    update_s = best_of(average.update, args.steps * 10)
    swap_s = best_of(apply_and_restore, args.steps)
    params = model.num_parameters()
    print(f"{args.preset}: {params / 1e6:.2f} M parameters, {torch.get_num_threads()} thread(s)")
    print(f"  training step            {step_s * 1e3:8.1f} ms")
    share = update_s / step_s
    print(f"  EMA update               {update_s * 1e3:8.3f} ms  ({share:.2%} of a step)")
    print(f"  apply + restore (a val)  {swap_s * 1e3:8.3f} ms")


if __name__ == "__main__":
    main()

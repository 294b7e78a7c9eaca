"""What `charlstm train --preset auto` would choose on this machine, without training: the
table for each budget given (default 10 and 60 minutes), on the bundled corpus or DATA. Each
budget measures afresh (a few seconds each). `--speed 2x512=11625` (repeatable) plugs in a
recorded speed for a shape instead of timing it, to see what the rule makes of the speeds
measured elsewhere (e.g. bench/RESULTS.md's idle-machine table); shapes not given are timed.

    python bench/autopreset_table.py [DATA] [--budget 10 --budget 60] [--speed SHAPE=CHARS_PER_S]
"""

from __future__ import annotations

import argparse

from charlstm.cli import ui
from charlstm.training.autopreset import choose_preset, measure_chars_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=None)
    parser.add_argument("--budget", type=float, action="append", help="minutes (repeatable)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--speed", action="append", default=[], metavar="SHAPE=CHARS_PER_S")
    args = parser.parse_args()
    recorded = {k: float(v) for k, v in (s.split("=") for s in args.speed)}

    def measure(cfg, vocab_size, device, world_size=1):
        shape = f"{cfg.num_layers}x{cfg.hidden_size}"
        if shape in recorded:
            return recorded[shape]
        return measure_chars_per_s(cfg, vocab_size, device, world_size)

    for minutes in args.budget or [10.0, 60.0]:
        choice = choose_preset(args.data, minutes, device=args.device, measure=measure)
        ui.show_auto_choice(choice)
        ui.info("")


if __name__ == "__main__":
    main()

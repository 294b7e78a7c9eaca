"""What `charlstm train --preset auto` would choose on this machine, without training: the
measured table for each budget given (default 10 and 60 minutes), on the bundled corpus or
DATA. Each budget measures afresh (a few seconds each).

    python bench/autopreset_table.py [DATA] [--budget 10 --budget 60] [--device auto]
"""

from __future__ import annotations

import argparse

from charlstm import ui
from charlstm.autopreset import choose_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=None)
    parser.add_argument("--budget", type=float, action="append", help="minutes (repeatable)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    for minutes in args.budget or [10.0, 60.0]:
        ui.show_auto_choice(choose_preset(args.data, minutes, device=args.device))


if __name__ == "__main__":
    main()

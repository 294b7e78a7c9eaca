"""`charlstm report`'s terminal chart: the hand-written grid against plotext, at 80 columns, as a
pipe or a log file receives it (NO_COLOR=1). Prints both charts, then what each wrote besides
the chart: ANSI escape sequences, and the time to import and draw.

    NO_COLOR=1 python bench/terminal_chart.py | cat     # pip install plotext (5.x or 6.x)

docs/libraries.md records the result and the decision.
"""

from __future__ import annotations

import math
import re
import time

from charlstm.training.report import Curves, text_chart

ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
WIDTH, HEIGHT = 80, 20


def curves() -> Curves:
    """A typical run: train loss falling from 5.5 to 1.3 over 200 log lines, 9 validations."""
    train = [(i * 4096, 4.2 * math.exp(-i / 30) + 1.3 + 0.05 * math.sin(i)) for i in range(1, 200)]
    val = [(i * 4096, 4.0 * math.exp(-i / 30) + 1.45) for i in range(20, 200, 20)]
    return Curves(train=train, val=val)


def plotext_chart(c: Curves) -> str:
    import plotext as plt

    xs, ys = zip(*c.train, strict=True)
    vx, vy = zip(*c.val, strict=True)
    if hasattr(plt, "plot"):  # plotext 5.x
        plt.clear_figure()
        plt.plot_size(WIDTH, HEIGHT)
        plt.theme("clear")  # its least coloured theme
        plt.plot(xs, ys, label="train loss")
        plt.scatter(vx, vy, label="val loss", marker="o")
        plt.xlabel("characters seen")
        return plt.build()
    figure = plt.figure  # plotext 6.x: a new API
    figure.plot_size(WIDTH, HEIGHT)
    figure.draw(figure.signal(list(xs), list(ys)).label("train loss"))
    figure.draw(figure.signal(list(vx), list(vy), marker="o").label("val loss"))
    return str(figure.build())


def main() -> None:
    c = curves()
    start = time.perf_counter()
    ours = "\n".join(text_chart(c, width=WIDTH - 12, height=16))
    ours_s = time.perf_counter() - start
    print(ours, "\n")
    try:
        start = time.perf_counter()
        import plotext

        import_s = time.perf_counter() - start
        start = time.perf_counter()
        theirs = plotext_chart(c)
        draw_s = time.perf_counter() - start
    except ImportError:
        print("plotext is not installed: pip install plotext")
        return
    print(theirs, "\n")
    print(f"hand-written: {len(ESCAPE.findall(ours))} escape sequences, {ours_s * 1e3:.1f} ms")
    print(f"plotext {getattr(plotext, '__version__', '?')}: {len(ESCAPE.findall(theirs))} escape "
          f"sequences, import {import_s * 1e3:.0f} ms, draw {draw_s * 1e3:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()

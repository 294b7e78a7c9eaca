"""How many bad inputs the test suite tries, per command: the tests marked `bad_input`
(`@pytest.mark.bad_input("bench")`, or with no argument the test's `command` parameter), one
per collected test case and command. Collection only: nothing runs.

    python scripts/count_bad_inputs.py            # a table
    python scripts/count_bad_inputs.py --json
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest


class _Count:
    def __init__(self) -> None:
        self.per_command: Counter[str] = Counter()
        self.tests: dict[str, list[str]] = {}

    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            marker = item.get_closest_marker("bad_input")
            if marker is None:
                continue
            params = getattr(getattr(item, "callspec", None), "params", {})
            named = marker.args[0] if marker.args else params.get("command", "?")
            for command in named.split(","):  # "eval, sample": the same input to each
                self.per_command[command.strip()] += 1
                self.tests.setdefault(command.strip(), []).append(item.nodeid)


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    count = _Count()
    code = pytest.main(
        ["--collect-only", "-q", "-p", "no:cacheprovider", "-n", "0", str(root / "tests")],
        plugins=[count],
    )
    if code not in (0, 5):
        return int(code)
    if "--json" in sys.argv:
        print(json.dumps({"per_command": dict(count.per_command), "tests": count.tests}, indent=2))
        return 0
    print(f"\n{'command':<14} bad inputs tried")
    for command, n in sorted(count.per_command.items(), key=lambda kv: -kv[1]):
        print(f"{command:<14} {n:>5}")
    print(f"{'all':<14} {sum(count.per_command.values()):>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Print the steady-state memory of the running local stack, per service and in total.

Usage:
    stack/bin/stackctl python -m benchmarks.stack_memory [--samples 5]

Memory is PSS (proportional set size, /proc/PID/smaps_rollup) summed over each supervised
program and all its descendants, so shared pages are not counted twice. Target for the idle
stack: at most 6 GiB.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from stack import manager
from stack.settings import load_settings


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue  # the task exited while we looked: it has no memory to count
    return kids


def tree_pss_kib(pid: int) -> int:
    """Return the PSS in KiB of `pid` and all its descendants."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue  # exited between listing and reading
        stack += _children(current)
    return total


def main(argv: list[str] | None = None) -> int:
    """Sample the stack's memory; print per-service medians and the total."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=5, help="samples to take (median reported)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error("--samples must be at least 1")

    settings = load_settings()
    sup = manager.Supervisor(settings)
    if not sup.running():
        print("the stack is not running: start it with `make up`", file=sys.stderr)
        return 2
    samples: dict[str, list[int]] = {}
    for i in range(args.samples):
        for name, info in sup.all_info().items():
            if info["statename"] == "RUNNING" and info["pid"]:
                samples.setdefault(name, []).append(tree_pss_kib(info["pid"]))
        if i + 1 < args.samples:
            time.sleep(args.interval)  # spacing between samples of a steady state
    print(f"{'service':24} {'PSS MiB (median of ' + str(args.samples) + ')':>24}")
    total = 0.0
    for name, values in sorted(samples.items()):
        mib = statistics.median(values) / 1024
        total += mib
        print(f"{name:24} {mib:24.0f}")
    print(f"{'TOTAL':24} {total:24.0f}   ({total / 1024:.2f} GiB; target <= 6 GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Tiny units of work for tests/test_executor.py, in a module spawned workers can import.

`python executor_tasks.py FOLDER JOBS UNITS SLEEP_S` runs `sleeper` units through a LocalExecutor
and exits 130 when interrupted, as the CLI does; the tests signal it and watch what stays behind.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from seqsense.fileio import write_atomic


def square(x, events):
    """x², with one progress update and one postfix per call."""
    events.put(("update", 1))
    events.put(("postfix", f"square {x}"))
    return x * x


def square_or_fail(x, bad, events):
    """x², or ValueError when x == bad."""
    if x == bad:
        raise ValueError(f"unit {x} is bad")
    return square(x, events)


def pid(x, events):
    """(x, this process's pid)."""
    return x, os.getpid()


def die(x, events):
    """Ends its worker process without a word when x is negative."""
    if x < 0:
        os._exit(3)
    return x


def torch_threads(x, events):
    """(x, torch's intra-op thread count in this process)."""
    import torch

    return x, torch.get_num_threads()


def sleeper(folder, index, sleep_s, events):
    """Write FOLDER/INDEX.started (holding the pid), sleep, then write FOLDER/INDEX.done atomically."""
    folder = Path(folder)
    write_atomic(folder / f"{index}.started", str(os.getpid()))
    time.sleep(sleep_s)
    write_atomic(folder / f"{index}.done", "done")
    return index


def main(argv: list[str]) -> int:
    """Run `units` sleepers with `jobs` workers; 130 when interrupted."""
    from seqsense.study.executor import LocalExecutor

    folder, jobs, units, sleep_s = argv[0], int(argv[1]), int(argv[2]), float(argv[3])
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    try:
        LocalExecutor(jobs, threads=None).map(sleeper, [(folder, i, sleep_s) for i in range(units)])
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The study's executors: results in order, failures isolated, progress events, and clean stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import executor_tasks
from seqsense.errors import ConfigError
from seqsense.study.executor import LocalExecutor, RayExecutor, make_executor

TESTS_DIR = Path(__file__).parent
START_TIMEOUT_S = 90.0  # spawned workers import torch; on a loaded 2-core machine that takes a while


def _alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def _started(folder: Path) -> dict[int, int]:
    """{unit index: worker pid} of the units that started."""
    return {int(p.stem): int(p.read_text()) for p in folder.glob("*.started")}


def _start_sleepers(folder: Path, jobs: int = 2, units: int = 6, sleep_s: float = 60.0) -> subprocess.Popen:
    """The sleeper script in its own process group (as a terminal runs it), once `jobs` units run."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, str(TESTS_DIR / "executor_tasks.py"), str(folder), str(jobs), str(units), str(sleep_s)],
        env=env,
        start_new_session=True,
    )
    try:
        _wait_for(lambda: len(_started(folder)) >= jobs or proc.poll() is not None, START_TIMEOUT_S, "the units to start")
    except BaseException:
        proc.kill()
        raise
    assert proc.poll() is None, f"the sleeper script exited early with code {proc.returncode}"
    return proc


def test_results_in_order_with_failures_and_events():
    events = []
    tasks = [(x, 3) for x in range(6)]
    results = LocalExecutor(jobs=2, threads=None).map(executor_tasks.square_or_fail, tasks, on_event=lambda k, v: events.append((k, v)))
    assert [r for r, _ in results] == [x * x if x != 3 else None for x in range(6)]
    assert [e is None for _, e in results] == [x != 3 for x in range(6)]
    assert "ValueError: unit 3 is bad" in results[3][1]
    assert sum(v for k, v in events if k == "update") == 5
    assert sorted(v for k, v in events if k == "postfix") == sorted(f"square {x}" for x in range(6) if x != 3)


def test_inline_matches_processes_and_runs_here():
    events = []
    inline = LocalExecutor(jobs=1).map(executor_tasks.square_or_fail, [(x, 3) for x in range(6)], on_event=lambda k, v: events.append(k))
    assert [r for r, _ in inline] == [x * x if x != 3 else None for x in range(6)]
    assert events.count("update") == 5
    assert LocalExecutor(jobs=1).map(executor_tasks.pid, [(0,)]) == [((0, os.getpid()), None)]


def test_a_dead_worker_fails_only_its_unit():
    results = LocalExecutor(jobs=2, threads=None).map(executor_tasks.die, [(1,), (-1,), (2,), (3,)])
    assert [r for r, _ in results] == [1, None, 2, 3]
    assert "died (exit code 3)" in results[1][1]


@pytest.mark.slow
def test_workers_get_their_torch_threads():
    # slow: each spawned worker imports torch
    assert LocalExecutor(jobs=2, threads=1).map(executor_tasks.torch_threads, [(0,), (1,)]) == [((0, 1), None), ((1, 1), None)]


def test_make_executor_names():
    assert isinstance(make_executor("local", 2, 1), LocalExecutor)
    with pytest.raises(ConfigError, match="'local'.*'ray'"):
        make_executor("dask", 2, 1)


@pytest.mark.parametrize("target, signum", [("group", signal.SIGINT), ("main", signal.SIGINT), ("main", signal.SIGTERM)])
def test_interrupt_stops_workers_and_exits_130(tmp_path, target, signum):
    proc = _start_sleepers(tmp_path)
    before = _started(tmp_path)
    t0 = time.monotonic()
    if target == "group":
        os.killpg(proc.pid, signum)  # what Ctrl-C in a terminal does
    else:
        os.kill(proc.pid, signum)
    try:
        code = proc.wait(timeout=10)
    finally:
        proc.kill()
    elapsed = time.monotonic() - t0
    assert code == 130
    assert elapsed < 5.0, f"took {elapsed:.1f} s to stop"
    _wait_for(lambda: not any(_alive(p) for p in before.values()), 2.0, "the workers to be gone")
    time.sleep(0.3)
    assert _started(tmp_path) == before  # no unit started after the signal
    assert not list(tmp_path.glob("*.done"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{i}.started" for i in before)  # no temp files


def test_workers_exit_when_the_main_process_is_killed(tmp_path):
    proc = _start_sleepers(tmp_path)
    pids = list(_started(tmp_path).values())
    proc.kill()
    proc.wait()
    _wait_for(lambda: not any(_alive(p) for p in pids), 5.0, "orphaned workers to exit by themselves")
    assert not list(tmp_path.glob("*.done"))


@pytest.mark.slow
def test_ray_matches_local():
    ray = pytest.importorskip("ray")
    # Ray workers cannot import the tests folder: ship this helper module by value.
    ray.cloudpickle.register_pickle_by_value(executor_tasks)
    tasks = [(x, 3) for x in range(5)]
    local = LocalExecutor(jobs=1).map(executor_tasks.square_or_fail, tasks)
    events = []
    with RayExecutor(threads=1, num_cpus=2) as executor:
        remote = executor.map(executor_tasks.square_or_fail, tasks, on_event=lambda k, v: events.append((k, v)))
    assert not ray.is_initialized()
    assert [r for r, _ in remote] == [r for r, _ in local]
    assert [e is None for _, e in remote] == [e is None for _, e in local]
    assert "ValueError: unit 3 is bad" in remote[3][1]
    assert sum(v for k, v in events if k == "update") == 4


def test_unpicklable_units_are_refused_clearly():
    with pytest.raises(TypeError, match="picklable"):
        LocalExecutor(jobs=2).map(lambda x, events: x, [(1,), (2,)])

"""Executors: run the study's independent units of work on local processes or on a Ray cluster.

An executor owns its workers. `map(fn, tasks, on_event)` calls the module-level function
`fn(*task, events)` once per task in a worker and returns `(value, None)` or `(None, error_text)` per
task, in task order; a failing task never stops the others. `events.put((kind, value))` in a worker
("update" with an int, "postfix" with a str) reaches `on_event(kind, value)` in the calling process
while the units run.

Stopping. Ctrl-C (SIGINT to the process group, as a terminal sends, or to the main process alone) and
SIGTERM to the main process stop the whole map within a few seconds: no new unit starts, running
workers get SIGTERM (which raises SystemExit in them, so `try/except BaseException` clean-ups such
as `seqsense.fileio.write_atomic` remove their temporary files), are killed after `TERM_GRACE_S` if
they ignore it, and `map` raises KeyboardInterrupt (the CLI exits 130). Units write through a
temporary file and a rename, so a stopped unit leaves nothing that looks finished.

Workers never outlive the main process, even when it dies by SIGKILL: a watchdog thread in each
worker waits on `multiprocessing.parent_process().sentinel`, a pipe whose write end only the parent
holds (a process handle on Windows), so the parent's death, however it happens, wakes it at once
without polling; the worker then stops itself as on SIGTERM. This works wherever the spawn start
method does, unlike `prctl(PR_SET_PDEATHSIG)` (Linux only) or a `getppid()` poll (POSIX only, and late
by one polling period).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque

from seqsense.errors import ConfigError

TERM_GRACE_S = 2.0  # how long a worker may take to exit after SIGTERM before it is killed

EXECUTORS = {
    "local": "processes on this machine (default)",
    "ray": "tasks on a Ray instance: local, or the cluster at RAY_ADDRESS (pip install 'seqsense[ray]')",
}


class Executor:
    """Owns the workers that run units of work; `map` runs a list of tasks through them."""

    def map(self, fn, tasks: list[tuple], on_event=None) -> list[tuple[object | None, str | None]]:
        """Run `fn(*task, events)` for every task; `(value, None)` or `(None, error_text)` in task order."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the executor holds (workers, a Ray instance it started)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def error_text(exc: BaseException) -> str:
    """`Type: message` and the innermost frames of the traceback, for a failed unit's status."""
    frames = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-4))
    return f"{type(exc).__name__}: {exc}\n{frames}"


def _set_torch_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))


class _CallbackEvents:
    """Events of a unit run in the calling process: straight to `on_event`."""

    def __init__(self, on_event):
        self.on_event = on_event

    def put(self, item) -> None:
        if self.on_event is not None:
            self.on_event(*item)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While mapping, SIGTERM to the main process raises KeyboardInterrupt like Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_deferred():
    """No SIGINT/SIGTERM while stopping workers: a second Ctrl-C must not cut the clean-up short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _sigint_blocked():
    """Block SIGINT around a worker's start: the child inherits the mask, so a Ctrl-C while it imports
    cannot print a traceback there, and one that reaches the parent meanwhile is delivered after."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


# ---- the worker side of LocalExecutor ----------------------------------------------------------------
class _PipeEvents:
    """Events of a unit in a worker: sent to the parent over the worker's pipe."""

    def __init__(self, conn):
        self.conn = conn

    def put(self, item) -> None:
        kind, value = item
        self.conn.send(("event", kind, value))


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def _watch_parent() -> None:
    """Stop this worker (as SIGTERM does, then hard) as soon as the parent process is gone."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    multiprocessing.connection.wait([parent.sentinel])
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(TERM_GRACE_S)
    os._exit(1)


def _worker_main(conn, threads: int | None) -> None:
    """A worker process: serve units until told to stop; on SIGTERM, exit as soon as the unit unwound."""
    try:
        _serve(conn, threads)
    except SystemExit as e:
        # The unit's clean-ups ran while SystemExit unwound it; tearing down torch would take seconds.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(e.code if isinstance(e.code, int) else 1)


def _serve(conn, threads: int | None) -> None:
    """Run (index, fn, task) messages until None or the pipe closes."""
    # SIGINT from the terminal reaches the whole group; the parent decides what stops and how.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    threading.Thread(target=_watch_parent, name="seqsense-parent-watchdog", daemon=True).start()
    _set_torch_threads(threads)
    events = _PipeEvents(conn)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        except Exception as e:  # the unit could not be unpickled here (e.g. fn not importable): the parent knows which
            conn.send(("done", None, None, f"the unit could not be received: {error_text(e)}"))
            continue
        if message is None:
            return
        index, fn, task = message
        try:
            outcome = ("done", index, fn(*task, events), None)
        except Exception as e:
            outcome = ("done", index, None, error_text(e))
        try:
            conn.send(outcome)
        except Exception as e:  # the result is not picklable
            conn.send(("done", index, None, f"the unit's result could not be sent back: {error_text(e)}"))


class _Worker:
    """The parent's handle on one worker process: the process, its pipe, the task it runs."""

    def __init__(self, ctx, threads: int | None, number: int):
        self.conn, self._child_conn = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(self._child_conn, threads), name=f"seqsense-worker-{number}")
        self.index: int | None = None  # the task it runs, None when idle

    def start(self) -> "_Worker":
        with _sigint_blocked():
            self.process.start()
        self._child_conn.close()
        return self

    def exit_text(self) -> str:
        self.process.join(1.0)
        return f"worker process {self.process.pid} died (exit code {self.process.exitcode}) while running this unit"


class LocalExecutor(Executor):
    """Runs units in `jobs` spawned processes with `threads` torch threads each (None: torch's default).

    With jobs 1 the units run inline in the calling process, whose torch settings stay as they are.
    """

    def __init__(self, jobs: int = 1, threads: int | None = 1):
        if int(jobs) < 1:
            raise ConfigError(f"LocalExecutor: jobs must be >= 1, got {jobs}.")
        self.jobs = int(jobs)
        self.threads = threads
        self._ctx = multiprocessing.get_context("spawn")

    def map(self, fn, tasks, on_event=None):
        tasks = [tuple(t) for t in tasks]
        if not tasks:
            return []
        with _sigterm_as_interrupt():
            if self.jobs == 1:
                return self._map_inline(fn, tasks, on_event)
            return self._map_processes(fn, tasks, on_event)

    def _map_inline(self, fn, tasks, on_event):
        events = _CallbackEvents(on_event)
        results = []
        for task in tasks:
            try:
                results.append((fn(*task, events), None))
            except Exception as e:
                results.append((None, error_text(e)))
        return results

    def _map_processes(self, fn, tasks, on_event):
        results: list = [None] * len(tasks)
        todo = deque(range(len(tasks)))
        workers: list[_Worker] = []
        try:
            numbers = itertools.count()
            for _ in range(min(self.jobs, len(tasks))):
                workers.append(_Worker(self._ctx, self.threads, next(numbers)))  # listed before it starts: _stop sees it
                workers[-1].start()
            while todo or any(w.index is not None for w in workers):
                for w in workers:
                    if w.index is None and todo:
                        w.index = todo.popleft()
                        try:  # the pipe pickles the unit; a failure leaves nothing half-sent
                            w.conn.send((w.index, fn, tasks[w.index]))
                        except Exception as e:
                            raise TypeError(f"LocalExecutor: fn and tasks must be picklable (fn a module-level function): {e}") from e
                self._collect(workers, results, on_event)
                if todo and len(workers) < min(self.jobs, len(todo) + sum(w.index is not None for w in workers)):
                    workers.append(_Worker(self._ctx, self.threads, next(numbers)))  # replaces a dead one
                    workers[-1].start()
        except BaseException:
            self._stop(workers)
            raise
        self._finish(workers)
        return results

    def _collect(self, workers: list[_Worker], results: list, on_event) -> None:
        """Wait up to 1 s for messages; handle events, results and workers that died."""
        waitables = {w.conn: w for w in workers}
        waitables.update({w.process.sentinel: w for w in workers})
        dead = set()
        for ready in multiprocessing.connection.wait(list(waitables), timeout=1.0):
            w = waitables[ready]
            if w in dead:
                continue
            try:
                while w.conn.poll():  # drain: a worker that died may have sent its last messages
                    message = w.conn.recv()
                    if message[0] == "event":
                        if on_event is not None:
                            on_event(message[1], message[2])
                    else:
                        _, index, value, err = message
                        results[w.index if index is None else index] = (value, err)
                        w.index = None
            except (EOFError, OSError):
                pass
            if not w.process.is_alive():
                dead.add(w)
        for w in dead:
            if w.index is not None:
                results[w.index] = (None, w.exit_text())
            w.conn.close()
            workers.remove(w)

    def _finish(self, workers: list[_Worker]) -> None:
        """Tell idle workers to exit, and make sure they did."""
        for w in workers:
            with contextlib.suppress(OSError):
                w.conn.send(None)
        deadline = time.monotonic() + 5.0
        for w in workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
        self._stop(workers)

    def _stop(self, workers: list[_Worker]) -> None:
        """Terminate every worker (SIGTERM), kill those still alive after TERM_GRACE_S, reap them."""
        started = [w for w in workers if w.process.pid is not None]
        with _signals_deferred():
            for w in started:
                if w.process.is_alive():
                    w.process.terminate()
            deadline = time.monotonic() + TERM_GRACE_S
            for w in started:
                w.process.join(max(0.0, deadline - time.monotonic()))
            for w in started:
                if w.process.is_alive():
                    w.process.kill()
                    w.process.join(1.0)
            for w in workers:
                w.conn.close()


# ---- Ray ---------------------------------------------------------------------------------------------
def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise ConfigError("The Ray executor needs Ray: pip install 'seqsense[ray]' (or choose --executor local).") from e
    return ray


class _QueueEvents:
    """Events of a unit in a Ray task: into a `ray.util.queue.Queue` the driver drains."""

    def __init__(self, queue):
        self.queue = queue

    def put(self, item) -> None:
        if self.queue is not None:
            self.queue.put(tuple(item))


def _ray_unit(fn, task, threads, queue):
    """One unit as a Ray task: (value, None) or (None, error_text), as in a local worker."""
    _set_torch_threads(threads)
    try:
        return fn(*task, _QueueEvents(queue)), None
    except Exception as e:
        return None, error_text(e)


class RayExecutor(Executor):
    """Runs units as Ray tasks of `threads` CPUs each on the instance at `address`, RAY_ADDRESS, or a
    local one of `num_cpus` CPUs started here (and shut down by `close`).

    On a cluster, tasks run on any node: seqsense must be installed on each, and the output folder and
    the data must be on a filesystem every node sees at the same path.
    """

    def __init__(self, address: str | None = None, threads: int = 1, num_cpus: int | None = None):
        self.ray = ray = _import_ray()
        self.threads = max(1, int(threads))
        self._started = False
        if not ray.is_initialized():
            quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
            address = address or os.environ.get("RAY_ADDRESS")
            if address:
                try:
                    ray.init(address=address, **quiet)
                except ConnectionError as e:
                    raise ConfigError(
                        f"Cannot reach the Ray cluster at {address!r} ({e}). Start its head with `ray start --head`, "
                        "or unset RAY_ADDRESS to run on a local Ray instance."
                    ) from e
            else:
                ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, **quiet)
            self._started = True

    def map(self, fn, tasks, on_event=None):
        ray = self.ray
        from ray.util.queue import Queue

        tasks = [tuple(t) for t in tasks]
        if not tasks:
            return []
        queue = Queue() if on_event is not None else None
        remote = ray.remote(_ray_unit).options(num_cpus=self.threads, max_retries=0)
        refs = []
        try:
            with _sigterm_as_interrupt():
                refs = [remote.remote(fn, task, self.threads, queue) for task in tasks]
                outcomes = {}
                pending = list(refs)
                while pending:
                    done, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
                    self._drain(queue, on_event)
                    for ref in done:
                        outcomes[ref] = self._outcome(ref)
                self._drain(queue, on_event)
            return [outcomes[ref] for ref in refs]
        except KeyboardInterrupt:
            with _signals_deferred():
                for ref in refs:
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)
            raise
        finally:
            if queue is not None:
                with contextlib.suppress(Exception):
                    queue.shutdown()

    def _outcome(self, ref) -> tuple:
        try:
            return tuple(self.ray.get(ref))
        except Exception as e:  # the task's process died, or its result could not be stored
            return None, error_text(e)

    @staticmethod
    def _drain(queue, on_event) -> None:
        if queue is None:
            return
        n = queue.qsize()
        if n:
            for kind, value in queue.get_nowait_batch(n):
                on_event(kind, value)

    def close(self) -> None:
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False


def make_executor(name: str, jobs: int, threads: int) -> Executor:
    """The executor called `name` ("local" or "ray"): `jobs` units at once, `threads` torch threads each."""
    if name == "local":
        return LocalExecutor(jobs, threads)
    if name == "ray":
        return RayExecutor(threads=threads, num_cpus=max(1, jobs) * max(1, threads))
    valid = ", ".join(f"'{k}' ({v})" for k, v in EXECUTORS.items())
    raise ConfigError(f"Unknown executor {name!r}; valid executors: {valid}.")

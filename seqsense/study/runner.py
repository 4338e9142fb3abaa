"""The study's runner: every cell × seed of a recipe as a unit of work, then aggregation and report.

Each unit (`seqsense.study.cell.CellRun`) writes its files atomically and is found again on the next
run, so an interrupted study resumes where it stopped and loses no finished unit. Units run in
worker processes (`seqsense.study.executor`: local processes, or Ray), each on one torch thread, so
`results.json` holds the same numbers whatever the machine's core count or load (budgets are
optimizer steps). Aggregation (`seqsense.study.aggregate`) turns the units' rows into the controlled
verdicts; `seqsense.claims` reads the claims off them; `seqsense.report` writes the report.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import time
from pathlib import Path

from seqsense import __version__
from seqsense.evaluate.offline import check_writable
from seqsense.fileio import write_json_atomic
from seqsense.study.aggregate import control_status, summarize_cell
from seqsense.study.cell import CellRun, units_per_cell
from seqsense.study.config import StudyConfig


def registered_families() -> list[str]:
    """Every registered model family, in registration order."""
    from seqsense.models import MODELS

    return list(MODELS)


class Study:
    """Runs the cells of a recipe into an output folder, resuming finished units."""

    def __init__(self, config: StudyConfig, out_dir: str | os.PathLike, progress: bool = True, log=print, jobs: int = 1,
                 executor: str = "local"):
        from seqsense.models import get_model_class
        from seqsense.scenarios import load_recipe

        self.config = config
        self.out = check_writable(out_dir)
        self.cells = load_recipe(config.recipe)
        self.families = list(config.families) or registered_families()
        for f in self.families:
            get_model_class(f)  # ConfigError listing valid names
        self.progress, self.log, self.jobs, self.executor = progress, log, jobs, executor

    def run(self) -> dict:
        """Run (or resume) every cell and seed, aggregate, write results.json and the report."""
        from tqdm import tqdm

        from seqsense.study.executor import make_executor

        t0 = time.perf_counter()
        c = self.config
        work = [(cell, seed) for cell in self.cells for seed in c.seeds]
        bar = tqdm(total=len(work) * units_per_cell(self.families), desc=f"study {c.recipe}", unit="step", disable=not self.progress)
        config = dataclasses.asdict(c)
        tasks = [(config, str(self.out.resolve()), cell, seed, self.families) for cell, seed in work]

        def on_event(kind, value):
            bar.update(value) if kind == "update" else bar.set_postfix_str(value)

        try:
            with make_executor(self.executor, jobs=min(self.jobs, len(work)), threads=1) as executor:
                outcomes = executor.map(run_unit, tasks, on_event=on_event)
        finally:
            bar.close()
        per_cell: dict[str, list[dict]] = {}
        errors: dict[str, str] = {}
        for (cell, seed), (result, error) in zip(work, outcomes):
            if error:
                errors[cell["name"]] = error
                self.log(f"cell {cell['name']} seed {seed} failed: {error}")
            else:
                per_cell.setdefault(cell["name"], []).append(result)
        results = self.aggregate(per_cell, errors, time.perf_counter() - t0)
        write_json_atomic(self.out / "results.json", results)
        from seqsense.report import write_report

        write_report(json.loads((self.out / "results.json").read_text()), self.out)
        return results

    def aggregate(self, per_cell: dict[str, list[dict]], errors: dict[str, str], elapsed_s: float) -> dict:
        """The results dict: per cell its models, controlled verdicts, oracle and control status."""
        from seqsense.claims import assess_claims
        from seqsense.scenarios import get_scenario, resolve_knobs

        c = self.config
        cells_out, controls = {}, {}
        for cell in self.cells:
            name = cell["name"]
            recorded = bool(cell.get("logs"))
            defaults = {} if recorded else resolve_knobs(get_scenario(cell["scenario"]), {})
            entry = {
                "scenario": "recorded" if recorded else cell["scenario"],
                "knobs": cell["knobs"],
                "swept": {k: v for k, v in cell["knobs"].items() if defaults.get(k) != v and k != "image_size"},
                **({"logs": list(cell["logs"]), "test_logs": list(cell.get("test_logs", [])), "test_fraction": cell["test_fraction"]}
                   if recorded else {}),
                "target": cell["target"],
                "inputs": list(cell["inputs"]),
                "role": cell.get("control") or ("experiment" if cell.get("experiment") else "cell"),
                "seeds": list(c.seeds),
                "episodes": _recorded_split(cell) if recorded else {"train": cell["episodes"], "test": c.test_episodes},
                "status": errors.get(name, "done"),
            }
            results = per_cell.get(name, [])
            if results:
                entry.update(summarize_cell(results, c))
                entry["compute_s"] = sum(r.get("seconds", 0.0) for r in results)
            status = control_status(cell, entry)
            if status is not None:
                controls[name] = status
            cells_out[name] = entry
        out = {
            "seqsense_version": __version__,
            "recipe": c.recipe,
            "seeds": list(c.seeds),
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "elapsed_s": elapsed_s,  # this invocation; cells finished by an earlier one were loaded
            "compute_s": sum(r.get("seconds", 0.0) for res in per_cell.values() for r in res),
            "machine": machine_info(),
            "budget": c.budget(),
            "families": self.families,
            "margin": c.margin,
            "controls": controls,
            "controls_pass": bool(controls) and all(s["status"] == "pass" for s in controls.values()),
            "cells": cells_out,
        }
        out["claims"] = assess_claims(out)
        return out


def _recorded_split(cell: dict) -> dict:
    """Train/test episode counts of a cell on recorded logs (the split's sizes depend only on the count)."""
    from seqsense.dataset import split_episodes

    if cell.get("test_logs"):
        return {"train": cell["episodes"] - cell["test_episodes"], "test": cell["test_episodes"]}
    train, test = split_episodes([("", str(i)) for i in range(cell["episodes"])], cell["test_fraction"], 0)
    return {"train": len(train), "test": len(test)}


def run_unit(config: dict, out_dir: str, cell: dict, seed: int, families: list[str], events=None) -> dict:
    """One (cell, seed) on one torch thread: its eval dict (runs in a worker process)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the same numbers on every machine: reductions depend on the thread count
    try:
        return CellRun(StudyConfig(**config), Path(out_dir), cell, seed, families, events).evaluate()
    finally:
        torch.set_num_threads(before)


def machine_info() -> dict:
    """CPU model, core count and library versions, for the report's header."""
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "device": "cpu", "python": platform.python_version()}


__all__ = ["Study", "StudyConfig", "machine_info", "registered_families", "run_unit"]

"""Stages in order, the run directory's saved workflow, and whole-pipeline runs.

The workflow a run directory was made with is saved in `_state/workflow.yaml` so that later
single-stage commands (`laion-pipe dedup --out DIR`) use the same settings without repeating them.
"""
from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from . import fsio
from .config import ConfigError, Workflow, load_workflow, workflow_from_dict
from .runner import StageReport
from .schema import STAGES, STATE_DIR

PIPELINE_STAGES: tuple[str, ...] = STAGES  # extract, dedup, download, score, select, stats


def stage_module(stage: str):
    if stage not in PIPELINE_STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages are {', '.join(PIPELINE_STAGES)}")
    return importlib.import_module(f"laion_pipe.stages.{stage}")


def saved_workflow_path(out: str) -> str:
    return fsio.join(out, STATE_DIR, "workflow.yaml")


def save_workflow(out: str, wf: Workflow) -> None:
    data = wf.model_dump(mode="json")
    data["runner"]["force"] = False  # a one-off request, not a setting of the run
    fsio.write_bytes_atomic(saved_workflow_path(out), yaml.safe_dump(data, sort_keys=False).encode())


def resolve_workflow(workflow_path: str | None, out: str | None, overrides: Sequence[str] | None) -> tuple[Workflow, str]:
    """The workflow for a command: an explicit file, else the one saved in the run directory,
    else the defaults; then `--set` overrides. Returns it with the run directory to use."""
    overrides = list(overrides or [])
    if workflow_path is not None:
        wf = load_workflow(workflow_path, overrides)
    elif out is not None and fsio.exists(saved_workflow_path(out)):
        fs, p = fsio.fs_and_path(saved_workflow_path(out))
        with fs.open(p, "rb") as f:
            wf = workflow_from_dict(yaml.safe_load(f.read()) or {}, overrides)
    else:
        wf = load_workflow(None, overrides)
    run_dir = out or wf.out
    if not run_dir:
        raise ConfigError("out: no run directory given (use --out DIR or set `out:` in the workflow)")
    if wf.out != run_dir:
        wf = wf.model_copy(update={"out": run_dir})
    return wf, run_dir


def parse_stages(spec: str | None) -> list[str]:
    """`extract,dedup` or `download:` (from download on) or `:select` (up to select)."""
    if not spec:
        return list(PIPELINE_STAGES)
    if ":" in spec:
        a, _, b = spec.partition(":")
        i = PIPELINE_STAGES.index(a) if a else 0
        j = PIPELINE_STAGES.index(b) + 1 if b else len(PIPELINE_STAGES)
        return list(PIPELINE_STAGES[i:j])
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        stage_module(n)
    return [s for s in PIPELINE_STAGES if s in names]


def run_stages(
    wf: Workflow,
    out: str,
    stages: Sequence[str],
    client: Any,
    on_report: Callable[[StageReport], None] | None = None,
    stop_on_failure: bool = False,
    **kwargs: Any,
) -> list[StageReport]:
    """Run the named stages in pipeline order. By default a stage with failed partitions does
    not stop the run: later stages work on what succeeded, every other partition completes, and
    the reports say the run is incomplete. Rerunning after the cause is fixed redoes the failed
    partitions, and the later stages' fingerprints see their new input and redo what it changes."""
    save_workflow(out, wf)
    reports = []
    for stage in stages:
        mod = stage_module(stage)
        t0 = time.time()
        report = mod.run(out, wf, client, **kwargs.get(stage, {}))
        report.seconds = report.seconds or round(time.time() - t0, 3)
        reports.append(report)
        if on_report:
            on_report(report)
        if report.failed and stop_on_failure:
            break
    return reports

"""Running stages by name, the `--stages` grammar, and the run directory's saved workflow.

Which stages exist, their order and what each takes part in is the table in
`stages/registry.py`; this module runs them. The workflow a run directory was made with is saved
in `_state/workflow.yaml` so that later single-stage commands (`laion-pipe dedup --out DIR`) use
the same settings without repeating them.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from . import fsio
from .config import ConfigError, Workflow, load_workflow, workflow_from_dict
from .runner import StageReport
from .schema import STATE_DIR
from .stages import registry
from .stages.registry import PIPELINE

PIPELINE_STAGES: tuple[str, ...] = PIPELINE
"""What `run` runs by default (extract .. stats); the name demo, tests and benchmarks import."""


def stage(name: str) -> registry.Stage:
    """The table row of stage `name`; an unknown name is a configuration error."""
    try:
        return registry.get(name)
    except registry.UnknownStage as e:
        raise ConfigError(str(e)) from None


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
    """The stages `--stages` names, in table order:
    - nothing: `PIPELINE` (extract .. stats);
    - a comma list: `extract,dedup`, any stage of the table;
    - a range: `a:b` every stage from a to b; `:b` from the first stage to b; `a:` from a to
      the last stage of a's kind (`select:` = select, stats; a stage that is not a curation
      stage starts its own run of the table, so `select:` never starts a training run)."""
    order = registry.names()
    if not spec or not spec.strip():
        return list(registry.names(curation=True))
    if ":" in spec:
        a, _, b = (x.strip() for x in spec.partition(":"))
        i = order.index(stage(a).name) if a else 0
        j = order.index(stage(b).name) if b else None
        if j is None:
            kind = stage(a).curation if a else True
            names = [n for n in order[i:] if registry.get(n).curation == kind]
        else:
            names = list(order[i : j + 1])
        if not names:
            raise ConfigError(f"--stages {spec!r}: no stage in that range (order: {', '.join(order)})")
        return names
    named = {stage(s.strip()).name for s in spec.split(",") if s.strip()}
    return [n for n in order if n in named]


def stage_has_run(out: str, name: str) -> bool:
    """Whether stage `name` left anything in run directory `out`: its state or its output folder."""
    return fsio.exists(fsio.join(out, STATE_DIR, name)) or fsio.exists(fsio.join(out, stage(name).out_dir))


def check_inputs(out: str, stages: Sequence[str], wf: Workflow | None = None) -> int | None:
    """Every named stage whose input stage is not also named must find that stage's outputs in
    `out`; else a ConfigError that says what was looked for (a mistyped directory is never
    created, and a stage is never run on nothing). With `wf`, each stage's own `check` runs
    too (extract resolves its inputs); returns the largest partition count they report."""
    named = set(stages)
    tasks: int | None = None
    for name in stages:
        row = stage(name)
        if row.after and row.after not in named and not stage_has_run(out, row.after):
            before = stage(row.after)
            raise ConfigError(
                f"{name}: nothing from the {before.name} stage in {out} (looked for {before.out_dir}/ and "
                f"{STATE_DIR}/{before.name}/); run `laion-pipe {before.name} --out {out}` first, or check the directory"
            )
        check = row.load_check() if wf is not None else None
        if check is not None:
            n = check(wf)
            if n is not None:  # a check that cannot tell how many partitions returns None
                tasks = n if tasks is None else max(tasks, n)
    return tasks


def run_stages(
    wf: Workflow,
    out: str,
    stages: Sequence[str],
    client: Any,
    on_report: Callable[[StageReport], None] | None = None,
    stop_on_failure: bool = False,
    **kwargs: Any,
) -> list[StageReport]:
    """Run the named stages in the order given, each as `run(out, wf, client, **kwargs[name])`
    (a stage that is not a Dask job may ignore the client). By default a stage with failed
    partitions does not stop the run: later stages work on what succeeded, every other partition
    completes, and the reports say the run is incomplete. Rerunning after the cause is fixed
    redoes the failed partitions, and the later stages' fingerprints see their new input and redo
    what it changes. A stage whose input stage is neither named nor found in `out` is a
    ConfigError before any work (`check_inputs`)."""
    rows = [stage(name) for name in stages]  # every name checked before any work
    check_inputs(out, stages)
    save_workflow(out, wf)
    reports = []
    for row in rows:
        run = row.load()
        t0 = time.time()
        report = run(out, wf, client, **kwargs.get(row.name, {}))
        report.seconds = report.seconds or round(time.time() - t0, 3)
        reports.append(report)
        if on_report:
            on_report(report)
        if report.failed and stop_on_failure:
            break
    return reports

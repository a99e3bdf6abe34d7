"""`laion-pipe train --out RUN`: the training stage.

Not a set of Dask partitions: one training run, `RUN/train/{name}/`, recorded through the
runner's manifest (`_state/train/{name}.json`) like any partition, so `laion-pipe status` shows
it and a rerun with the same data and settings skips it. The order of things:

1. `prepare`: every check that can fail fast (`preflight`, exit 2 before any work), the run's
   plan entry, the workflow snapshot the worker processes read, and `holdout.json`.
2. training: in this process when `train.launch.processes_per_node` is 1, else torchrun starts
   that many worker processes on this machine and the stage waits for them (their progress bar
   and messages go straight to this terminal). When a process fails, the run is recorded as
   failed with that process's error and traceback (the first failure, found by `elastic.py`),
   not with torchrun's note of the SIGTERM it then sent to the others.
3. `finish` (the main process): `loss.png` and the manifest, from the loop's `summary.json`.

A killed run resumes from its newest checkpoint when started again; `--force` starts over.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import yaml

from .. import fsio, runner
from ..runner import Outcome, Partition, StageReport
from .launch import job_workflow_path, local_command
from .loop import SUMMARY, train, train_dir
from .metrics import METRICS, plot_loss
from .preflight import preflight

STAGE = "train"
HOLDOUT_FILE = "holdout.json"
_NOT_FINGERPRINTED = {"log_every", "record_keys", "threads"}
_LAUNCH_FINGERPRINTED = {"processes_per_node", "nodes"}


def fingerprint(wf, shards: dict[str, list[str]], out: str | None = None) -> str:
    """What decides the trained weights: the train section (bar logging and job-script
    details), the demo's text encoder, each shard's identity (path, size, mtime) and the select
    partitions that wrote the run's own shards."""
    cfg = wf.train.model_dump(mode="json")
    launch = cfg.pop("launch")
    cfg = {k: v for k, v in cfg.items() if k not in _NOT_FINGERPRINTED}
    cfg["launch"] = {k: launch[k] for k in sorted(_LAUNCH_FINGERPRINTED)}
    text = wf.models.clip_en.model_dump(mode="json") if wf.train.model == "demo" and wf.train.text_encoder is None else None
    sizes = []
    for src, found in sorted(shards.items()):
        for s in found:
            try:
                ident = fsio.fingerprint_of(s)
            except Exception:  # noqa: BLE001 - an HTTP shard without a length
                ident = None
            sizes.append((src, s, ident))
    return runner.fingerprint(cfg, text, sizes, dataset_upstream(out, shards), decontamination_identity(wf))


def decontamination_identity(wf) -> list:
    """What else decides the decontaminated training set: each evaluation set's files (not only
    their names), the colour check's bound and, with semantic decontamination, select.neardup.eps."""
    if not wf.train.decontaminate:
        return []
    from .decontaminate import eval_set_identity

    eps = wf.select.neardup.eps if wf.train.decontaminate_semantic else None
    return [[eval_set_identity(s) for s in wf.train.eval_sets], eps, wf.select.neardup.colour_max_difference]


def dataset_upstream(out: str | None, shards: dict[str, list[str]]) -> tuple[tuple[str, str, str], ...]:
    """The select partitions that wrote the run's own dataset shards this training reads: part of
    the fingerprint and recorded in the plan, so a dataset rebuilt since (same file names, even the
    same sizes) is trained again, and evaluate can tell a model trained on data that changed."""
    if out is None:
        return ()
    wanted = {s for found in shards.values() for s in found}
    refs = []
    for done in runner.current(out, "select"):
        if any(fsio.join(out, rel) in wanted for rel in done.outputs):
            refs.append(done.ref)
    return tuple(refs)


def prepare(out: str, wf) -> tuple[dict[str, list[str]], str]:
    """Checks (raising `TrainInputError`), then the plan entry, the workflow snapshot and the
    holdout list. Returns the sources' shards and the run's fingerprint."""
    shards = preflight(wf, out)
    fp = fingerprint(wf, shards, out)
    inputs = tuple(s for found in shards.values() for s in found)
    mine = Partition(key=wf.train.name, inputs=inputs, fingerprint=fp, upstream=dataset_upstream(out, shards))
    # Training runs of other names in this run directory stay in the plan: each is its own model.
    others = [Partition(e["key"], tuple(e.get("inputs", ())), e.get("fingerprint", ""),
                        upstream=tuple(tuple(u) for u in e.get("upstream", ())))  # type: ignore[misc]
              for e in runner.read_plan(out, STAGE) or [] if e["key"] != wf.train.name]  # fmt: skip
    runner.write_plan(out, STAGE, sorted([*others, mine], key=lambda p: p.key))
    return shards, fp


def write_run_files(out: str, wf) -> str:
    """The workflow snapshot (what every worker process reads) and holdout.json."""
    from .holdout import write_holdout

    tdir = train_dir(out, wf)
    tdir.mkdir(parents=True, exist_ok=True)
    path = job_workflow_path(out, wf.train.name)
    data = wf.model_dump(mode="json")
    data["out"] = out
    data["runner"]["force"] = False
    fsio.write_bytes_atomic(path, yaml.safe_dump(data, sort_keys=False).encode())
    write_holdout(str(tdir / HOLDOUT_FILE), list(wf.train.sources), out, wf.train.holdout_fraction)
    if wf.train.decontaminate:
        from .decontaminate import FILE, decontaminate, write

        doc = decontaminate(list(wf.train.sources), out, wf.train.holdout_fraction, list(wf.train.eval_sets),
                            wf.train.decontamination_max_distance, wf=wf)
        write(str(tdir / FILE), doc)
        why = ", ".join(f"{n} {r}" for r, n in sorted(doc["counts"].items())) or "none"
        print(f"train {wf.train.name}: decontamination removed {len(doc['removed'])} of {doc['training_samples']} "
              f"training samples as copies of {doc['eval_images']} evaluation images ({why}); see {tdir / FILE}")
    else:
        from .decontaminate import FILE

        (tdir / FILE).unlink(missing_ok=True)  # an earlier run's list must not apply
    return path


def finish(out: str, wf, shards: dict[str, list[str]], fp: str, started: float) -> dict:
    """loss.png and the done manifest, from the loop's summary."""
    tdir = train_dir(out, wf)
    summary = json.loads((tdir / SUMMARY).read_text())
    plot_loss(tdir / METRICS, tdir / "loss.png")
    outcome = Outcome()
    outcome.counts.update({"steps": summary["steps"], "samples_seen": summary["samples_seen"]})
    outcome.counts.update({f"skipped.{k}": v for k, v in summary.get("skipped", {}).items()})
    rel = f"train/{wf.train.name}"
    outcome.outputs = [f"{rel}/final", f"{rel}/{METRICS}", f"{rel}/loss.png", f"{rel}/{HOLDOUT_FILE}"]
    from .decontaminate import FILE as DECONTAMINATION

    if (tdir / DECONTAMINATION).is_file():
        doc = json.loads((tdir / DECONTAMINATION).read_text())
        outcome.counts.update({f"decontaminated.{k}": v for k, v in doc.get("counts", {}).items()})
        outcome.outputs.append(f"{rel}/{DECONTAMINATION}")
    finished = time.time()
    return runner.write_manifest(
        out, STAGE, wf.train.name, fingerprint=fp, inputs=[s for f in shards.values() for s in f], outcome=outcome,
        started=started, finished=finished, seconds=round(finished - started, 3), summary=summary,
    )  # fmt: skip


def _failed(out: str, wf, fp: str, error: str, tb: str = "") -> dict:
    return runner.write_manifest(out, STAGE, wf.train.name, fingerprint=fp, inputs=[], status="failed",
                                 error=error[:1000], traceback=tb[-5000:])


class TrainingProcessFailed(RuntimeError):
    """A training process failed: its rank's message, and its own traceback (not the stage's)."""

    def __init__(self, message: str, process_traceback: str = "") -> None:
        super().__init__(message)
        self.process_traceback = process_traceback


def launch_local(out: str, wf, workflow_path: str, *, progress: bool) -> None:
    """torchrun with `processes_per_node` workers on this machine; raises `TrainingProcessFailed`
    with the first failure when the job fails (and prints that failure's traceback last, below
    torchrun's summary)."""
    from .elastic import describe

    with tempfile.TemporaryDirectory(prefix="laion-pipe-torchrun-") as tmp:
        cause_file = os.path.join(tmp, "root-cause.json")
        cmd = local_command(wf, out, workflow_path, progress=progress, root_cause=cause_file,
                            log_dir=os.path.join(tmp, "logs"))
        rc = subprocess.call(cmd)
        if rc == 0:
            return
        cause = json.loads(Path(cause_file).read_text()) if os.path.isfile(cause_file) else None
    if cause is None:
        raise TrainingProcessFailed(f"torchrun exited with code {rc} before any training process failed (its messages are above)")
    line = describe(cause)
    if cause.get("traceback"):
        print(f"\ntraining failed; first failure, {line}\n{cause['traceback'].rstrip()}", file=sys.stderr, flush=True)
    raise TrainingProcessFailed(f"training process {line}", cause.get("traceback", ""))


def run(out: str, wf, client=None) -> StageReport:
    """Train the workflow's `train:` model on `RUN/dataset/...` (the Dask client is not used:
    training runs under accelerate / torchrun)."""
    t0 = time.time()
    cfg = wf.train
    report = StageReport(stage=STAGE, planned=1)
    shards, fp = prepare(out, wf)
    force = bool(getattr(wf.runner, "force", False))
    done = runner.done_manifest(out, STAGE, cfg.name, fp)
    tdir = train_dir(out, wf)
    if done and not force and (tdir / "final").is_dir():
        report.skipped = 1
        report.add(done)
        report.seconds = round(time.time() - t0, 3)
        return report
    if force and tdir.exists():
        shutil.rmtree(tdir)
    workflow_path = write_run_files(out, wf)
    progress = bool(getattr(wf.runner, "progress", True))
    try:
        if cfg.launch.processes_per_node == 1:
            train(out, wf, progress=progress)
            manifest = finish(out, wf, shards, fp, t0)
        else:
            launch_local(out, wf, workflow_path, progress=progress)
            manifest = runner.read_manifest(out, STAGE, cfg.name) or {}
            if manifest.get("fingerprint") != fp or manifest.get("status") != "done":
                raise RuntimeError("the training processes ended without recording the run as done")
    except Exception as e:  # noqa: BLE001 - recorded as a failed run, like a failed partition
        if isinstance(e, TrainingProcessFailed):
            error, tb = str(e), e.process_traceback or traceback.format_exc()
        else:
            error, tb = f"{type(e).__name__}: {e}", traceback.format_exc()
        _failed(out, wf, fp, error, tb)
        report.failed.append({"key": cfg.name, "error": error[:1000]})
        report.seconds = round(time.time() - t0, 3)
        return report
    report.done = 1
    report.add(manifest)
    report.kept = Counter()
    report.seconds = round(time.time() - t0, 3)
    return report


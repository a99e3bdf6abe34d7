"""Partitions -> Dask tasks, with atomic outputs, per-partition manifests, resume and progress.

Every stage is a pure function `fn(partition, out, workflow) -> Outcome` that writes its output
files with `fsio.atomic_open` (temporary name, then rename). When it returns, the task itself
writes `_state/{stage}/{key}.json` with status "done": that manifest is the only thing that
marks a partition finished, so killing the driver or a worker at any moment loses no finished
work and leaves no half file under a final name. A rerun skips partitions whose manifest says
done with the same input fingerprint; a partition whose input or settings changed is redone.
"""
from __future__ import annotations

import hashlib
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from distributed import Client, as_completed

from . import fsio
from .schema import ANY_SUBSET, DROP_REASONS, STATE_DIR

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Partition:
    """One unit of work: a Dask task. `key` names its manifest and is unique within the stage."""

    key: str
    inputs: tuple[str, ...]
    fingerprint: str
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)


@dataclass
class Outcome:
    """What a stage function reports for one partition: counters, drops with reasons, bad-record
    notes and the output files it wrote (paths relative to the run directory)."""

    counts: Counter = field(default_factory=Counter)
    kept: Counter = field(default_factory=Counter)  # rows written, per subset
    drops: dict[str, Counter] = field(default_factory=dict)  # subset ("*" = before a subset is known) -> reason -> n
    errors: list[dict] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    max_errors: int = 100

    def drop(self, reason: str, subset: str = ANY_SUBSET, n: int = 1) -> None:
        if reason not in DROP_REASONS:
            raise ValueError(f"unknown drop reason {reason!r}: add it to schema.DROP_REASONS")
        if n:
            self.drops.setdefault(subset, Counter())[reason] += n

    def error(self, kind: str, message: str, offset: int | None = None) -> None:
        """Note a bad record: always counted, the first `max_errors` kept with their offsets."""
        self.counts["bad_records"] += 1
        self.counts[f"bad_records.{kind}"] += 1
        if len(self.errors) < self.max_errors:
            self.errors.append({"kind": kind, "offset": offset, "message": message[:500]})

    def to_json(self) -> dict:
        return {
            "counts": dict(self.counts),
            "kept": dict(self.kept),
            "drops": {s: dict(c) for s, c in self.drops.items()},
            "errors": self.errors,
            "outputs": self.outputs,
        }


StageFn = Callable[[Partition, str, Any], Outcome]


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able parts (input identities, the settings that change the output)."""
    blob = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str)
    return hashlib.sha256(blob).hexdigest()[:24]


def manifest_path(out: str, stage: str, key: str) -> str:
    return fsio.join(out, STATE_DIR, stage, f"{key}.json")


def read_manifest(out: str, stage: str, key: str) -> dict | None:
    path = manifest_path(out, stage, key)
    try:
        return fsio.read_json(path)  # type: ignore[return-value]
    except FileNotFoundError:
        return None
    except Exception:  # a manifest we cannot read means the partition is not done
        return None


def _run_partition(stage: str, part: Partition, fn: StageFn, out: str, wf: Any) -> dict:
    """The Dask task: run the stage function, then mark the partition done. Raises on failure
    so Dask's own retries apply (on another worker when a worker died)."""
    started = time.time()
    previous = read_manifest(out, stage, part.key)
    outcome = fn(part, out, wf)
    finished = time.time()
    # Outputs of an earlier run of this partition that this run no longer writes are stale.
    if previous and previous.get("fingerprint") != part.fingerprint:
        for rel in set(previous.get("outputs", [])) - set(outcome.outputs):
            fs, p = fsio.fs_and_path(fsio.join(out, rel))
            if fs.exists(p):
                fs.rm(p)
    manifest = {
        "version": MANIFEST_VERSION,
        "stage": stage,
        "key": part.key,
        "status": "done",
        "fingerprint": part.fingerprint,
        "inputs": list(part.inputs),
        "started": started,
        "finished": finished,
        "seconds": round(finished - started, 3),
        **outcome.to_json(),
    }
    fsio.write_json_atomic(manifest_path(out, stage, part.key), manifest)
    return manifest


@dataclass
class StageReport:
    stage: str
    planned: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[dict] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    kept: Counter = field(default_factory=Counter)
    drops: dict[str, Counter] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.failed

    def add(self, manifest: dict) -> None:
        self.counts.update(manifest.get("counts", {}))
        self.kept.update(manifest.get("kept", {}))
        for subset, reasons in manifest.get("drops", {}).items():
            self.drops.setdefault(subset, Counter()).update(reasons)

    def to_json(self) -> dict:
        d = asdict(self)
        d["drops"] = {s: dict(c) for s, c in self.drops.items()}
        d["counts"], d["kept"] = dict(self.counts), dict(self.kept)
        return d


def _progress(enabled: bool, stage: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    prog = Progress(
        TextColumn(f"[bold]{stage:>8}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )
    return prog


def write_plan(out: str, stage: str, partitions: Iterable[Partition]) -> None:
    """Record which partitions a stage has, so `status` can tell pending from done."""
    fsio.write_json_atomic(
        fsio.join(out, STATE_DIR, stage, "_plan.json"),
        {"stage": stage, "partitions": [{"key": p.key, "inputs": list(p.inputs)} for p in partitions]},
    )


def run_stage(
    stage: str,
    partitions: list[Partition],
    fn: StageFn,
    out: str,
    wf: Any,
    client: Client,
    *,
    resources: dict[str, float] | None = None,
    force: bool = False,
) -> StageReport:
    """Run `fn` over `partitions` on `client`, skipping those already done with the same
    fingerprint. Failed partitions (after `wf.runner.retries` Dask retries) get a manifest with
    status "failed" and their error; the others still complete."""
    t0 = time.time()
    keys = [p.key for p in partitions]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{stage}: duplicate partition keys")
    write_plan(out, stage, partitions)
    report = StageReport(stage=stage, planned=len(partitions))
    todo: list[Partition] = []
    runner_cfg = getattr(wf, "runner", None)
    force = force or bool(getattr(runner_cfg, "force", False))
    for part in partitions:
        m = None if force else read_manifest(out, stage, part.key)
        if m and m.get("status") == "done" and m.get("fingerprint") == part.fingerprint:
            report.skipped += 1
            report.add(m)
        else:
            todo.append(part)

    retries = getattr(runner_cfg, "retries", 2)
    show = getattr(runner_cfg, "progress", True)
    prog = _progress(show, stage)
    with prog:
        task = prog.add_task(stage, total=len(partitions), completed=report.skipped, note="")
        futures = {}
        for part in todo:
            fut = client.submit(
                _run_partition,
                stage,
                part,
                fn,
                out,
                wf,
                key=f"{stage}-{part.key}-{part.fingerprint}",
                pure=False,
                retries=retries,
                resources=resources,
            )
            futures[fut] = part
        for fut in as_completed(list(futures)):
            part = futures[fut]
            if fut.status == "finished":
                m = fut.result()
                report.done += 1
                report.add(m)
            else:
                exc = fut.exception()
                tb = "".join(traceback.format_exception(type(exc), exc, fut.traceback())) if exc else ""
                failure = {
                    "version": MANIFEST_VERSION,
                    "stage": stage,
                    "key": part.key,
                    "status": "failed",
                    "fingerprint": part.fingerprint,
                    "inputs": list(part.inputs),
                    "error": (f"{type(exc).__name__}: {exc}" if exc else "unknown error")[:1000],
                    "traceback": tb[-5000:],
                    "attempts": retries + 1,
                    "finished": time.time(),
                }
                fsio.write_json_atomic(manifest_path(out, stage, part.key), failure)
                report.failed.append({"key": part.key, "error": failure["error"]})
            fut.release()
            prog.update(task, advance=1, note=f"{len(report.failed)} failed" if report.failed else "")
    report.seconds = round(time.time() - t0, 3)
    return report


def stage_status(out: str, stage: str) -> dict[str, list[str]]:
    """done / failed / pending partition keys of one stage of a run directory."""
    plan_path = fsio.join(out, STATE_DIR, stage, "_plan.json")
    planned: list[str] = []
    if fsio.exists(plan_path):
        planned = [p["key"] for p in fsio.read_json(plan_path)["partitions"]]  # type: ignore[index]
    status: dict[str, list[str]] = {"done": [], "failed": [], "pending": []}
    seen = set()
    for path in fsio.glob(fsio.join(out, STATE_DIR, stage, "*.json")):
        name = path.rpartition("/")[2]
        if name.startswith("_"):
            continue
        key = name[: -len(".json")]
        m = read_manifest(out, stage, key)
        st = (m or {}).get("status")
        if st in ("done", "failed"):
            status[st].append(key)
            seen.add(key)
    status["pending"] = [k for k in planned if k not in seen]
    return {k: sorted(v) for k, v in status.items()}

"""Partitions -> Dask tasks, with atomic outputs, per-partition manifests, resume and progress.

Every stage is a pure function `fn(partition, out, workflow) -> Outcome` that writes its output
files with `fsio.atomic_open` (temporary name, then rename). When it returns, the task itself
writes `_state/{stage}/{key}.json` with status "done": that manifest is the only thing that
marks a partition finished, so killing the driver or a worker at any moment loses no finished
work and leaves no half file under a final name. A rerun skips partitions whose manifest says
done with the same input fingerprint; a partition whose input or settings changed is redone.

The bookkeeping is public for stages that are not a set of Dask partitions (training runs
under accelerate) or that plan in phases (dedup, select):
- `is_done(out, stage, key, fingerprint)`: finished with exactly this input and settings;
- `write_manifest(out, stage, key, fingerprint=..., inputs=..., outcome=...)`: mark it so;
- `prune(out, stage, keep_keys)`: remove partitions (manifests and the outputs they list) that
  the current plan no longer has.
`--force` reaches every stage one way: `wf.runner.force`, read by `run_stage`.
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


def done_manifest(out: str, stage: str, key: str, fingerprint: str) -> dict | None:
    """The manifest of partition `key` of `stage` if it finished with exactly this fingerprint
    (same inputs, same settings), else None."""
    m = read_manifest(out, stage, key)
    return m if m and m.get("status") == "done" and m.get("fingerprint") == fingerprint else None


def is_done(out: str, stage: str, key: str, fingerprint: str) -> bool:
    """Whether partition `key` of `stage` finished with exactly this fingerprint: the one test
    every skip and every "is the earlier phase done?" check uses."""
    return done_manifest(out, stage, key, fingerprint) is not None


def write_manifest(
    out: str,
    stage: str,
    key: str,
    *,
    fingerprint: str,
    inputs: Iterable[str],
    outcome: Outcome | None = None,
    status: str = "done",
    **fields: Any,
) -> dict:
    """Write `_state/{stage}/{key}.json` atomically and return it. With status "done" (the
    default) this marks the partition finished: write it only after every output file is in
    place. `outcome` adds its counts, drops, errors and outputs (paths relative to `out`, which
    `prune` removes with the partition); `fields` add anything else (times, an error)."""
    manifest = {
        "version": MANIFEST_VERSION,
        "stage": stage,
        "key": key,
        "status": status,
        "fingerprint": fingerprint,
        "inputs": list(inputs),
        **fields,
        **(outcome.to_json() if outcome is not None else {}),
    }
    manifest.setdefault("finished", time.time())
    fsio.write_json_atomic(manifest_path(out, stage, key), manifest)
    return manifest


def _remove(out: str, rels: Iterable[str]) -> None:
    for rel in rels:
        fs, p = fsio.fs_and_path(fsio.join(out, rel))
        if fs.exists(p):
            fs.rm(p)


def manifest_keys(out: str, stage: str) -> list[str]:
    """Keys of every partition manifest of `stage` (`_plan.json` and other `_` files excluded)."""
    keys = []
    for path in fsio.glob(fsio.join(out, STATE_DIR, stage, "*.json")):
        name = path.rpartition("/")[2]
        if not name.startswith("_"):
            keys.append(name[: -len(".json")])
    return keys


def prune(out: str, stage: str, keep_keys: Iterable[str], *, within: Callable[[str], bool] | None = None) -> list[str]:
    """Remove the partitions of `stage` that are not in `keep_keys` (a new plan has fewer of them):
    first the output files their manifests list, then the manifests. `within` limits pruning to
    the keys it accepts (select prunes only the recipes it plans). Returns the removed keys."""
    keep = set(keep_keys)
    removed = []
    for key in manifest_keys(out, stage):
        if key in keep or (within is not None and not within(key)):
            continue
        _remove(out, (read_manifest(out, stage, key) or {}).get("outputs", []))
        fs, p = fsio.fs_and_path(manifest_path(out, stage, key))
        fs.rm(p)
        removed.append(key)
    return removed


def _run_partition(stage: str, part: Partition, fn: StageFn, out: str, wf: Any) -> dict:
    """The Dask task: run the stage function, then mark the partition done. Raises on failure
    so Dask's own retries apply (on another worker when a worker died)."""
    started = time.time()
    previous = read_manifest(out, stage, part.key)
    outcome = fn(part, out, wf)
    finished = time.time()
    # Outputs of an earlier run of this partition that this run no longer writes are stale.
    if previous and previous.get("fingerprint") != part.fingerprint:
        _remove(out, set(previous.get("outputs", [])) - set(outcome.outputs))
    return write_manifest(
        out, stage, part.key, fingerprint=part.fingerprint, inputs=part.inputs, outcome=outcome,
        started=started, finished=finished, seconds=round(finished - started, 3),
    )  # fmt: skip


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


LOG_DIR = "logs"


def failure_log_path(stage: str, key: str) -> str:
    """Where a failed partition's full traceback goes, relative to the run directory."""
    return f"{STATE_DIR}/{LOG_DIR}/{stage}/{key}.log"


def write_failure_log(out: str, stage: str, key: str, error: str, tb: str, attempts: int) -> str:
    """Write a failed partition's error and full traceback to `_state/logs/{stage}/{key}.log`
    (the terminal shows one line naming this file); returns its path relative to `out`."""
    rel = failure_log_path(stage, key)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    text = f"{stage} partition {key} failed after {attempts} attempt(s) at {when} UTC\n{error}\n\n{tb}"
    fsio.write_bytes_atomic(fsio.join(out, rel), text.encode())
    return rel


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
) -> StageReport:
    """Run `fn` over `partitions` on `client`, skipping those already done with the same
    fingerprint (unless `wf.runner.force`). Failed partitions (after `wf.runner.retries` Dask
    retries) get a manifest with status "failed" and their error, and their full traceback in
    `_state/logs/{stage}/{key}.log`; the others still complete."""
    t0 = time.time()
    keys = [p.key for p in partitions]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{stage}: duplicate partition keys")
    write_plan(out, stage, partitions)
    report = StageReport(stage=stage, planned=len(partitions))
    todo: list[Partition] = []
    runner_cfg = getattr(wf, "runner", None)
    force = bool(getattr(runner_cfg, "force", False))
    for part in partitions:
        m = None if force else done_manifest(out, stage, part.key, part.fingerprint)
        if m is not None:
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
                error = (f"{type(exc).__name__}: {exc}" if exc else "unknown error")[:1000]
                log = write_failure_log(out, stage, part.key, error, tb, attempts=retries + 1)
                failure = write_manifest(
                    out, stage, part.key, fingerprint=part.fingerprint, inputs=part.inputs, status="failed",
                    error=error, traceback=tb[-5000:], attempts=retries + 1, log=log,
                )  # fmt: skip
                report.failed.append({"key": part.key, "error": failure["error"], "log": fsio.join(out, log)})
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
    for key in manifest_keys(out, stage):
        m = read_manifest(out, stage, key)
        st = (m or {}).get("status")
        if st in ("done", "failed"):
            status[st].append(key)
            seen.add(key)
    status["pending"] = [k for k in planned if k not in seen]
    return {k: sorted(v) for k, v in status.items()}

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

Reruns converge (the rule every stage keeps, so a rerun after any change of inputs or settings
leaves the run as a fresh run with the final settings would):
- a stage reads exactly its upstream's *current* partitions (`current(out, stage)`): those of the
  upstream's `_plan.json` whose manifest is done with the plan's fingerprint and whose own
  upstream is current in turn, never whatever files lie in a folder;
- a partition names the upstream partitions it reads (`Partition.upstream`, with their
  fingerprints, which its own fingerprint includes): a change upstream invalidates what was
  computed from it downstream, whatever the file names;
- before a stage runs, the manifests its plan no longer has and every file in its output folder
  that no planned partition claims are removed (`remove_stale`), so nothing downstream can read
  them. `stale(out, stage)` tells `status` what a run holds that its plans do not.
"""
from __future__ import annotations

import contextlib
import hashlib
import time
import traceback
import uuid
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
    upstream: tuple[tuple[str, str, str], ...] = ()
    """(stage, key, fingerprint) of every upstream partition this one reads; the fingerprint
    must include them (`fingerprint(..., part_upstream)`), and `current` checks them."""

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
    details: dict = field(default_factory=dict)
    """Anything else a later stage or phase reads from this partition's manifest (JSON-able, not
    summed by reports): dedup records where a run file's index lies, extract a URL list's column
    types."""

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
            **({"details": self.details} if self.details else {}),
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
    """Keys of every partition manifest of `stage` (`_plan.json` and other `_` files excluded), sorted."""
    names = fsio.names_in(fsio.join(out, STATE_DIR, stage))
    return sorted(n[: -len(".json")] for n in names if n.endswith(".json") and not n.startswith("_"))


def prune(out: str, stage: str, keep_keys: Iterable[str], *, within: Callable[[str], bool] | None = None) -> list[str]:
    """Remove the partitions of `stage` that are not in `keep_keys` (a new plan has fewer of them):
    first the output files their manifests list, then the manifests. `within` limits pruning to
    the keys it accepts (select prunes only the recipes it plans). Returns the removed keys."""
    keep = set(keep_keys)
    removed = []
    for key in manifest_keys(out, stage):
        if key in keep or (within is not None and not within(key)):
            continue
        _remove(out, _claimed(read_manifest(out, stage, key)))
        fs, p = fsio.fs_and_path(manifest_path(out, stage, key))
        fs.rm(p)
        removed.append(key)
    return removed


def _workflow(wf: Any) -> Any:
    """The Dask task whose result is the workflow every partition of a stage run reads."""
    return wf


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
        **({"upstream": [list(u) for u in part.upstream]} if part.upstream else {}),
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


PLAN_FILE = "_plan.json"


def plan_path(out: str, stage: str) -> str:
    return fsio.join(out, STATE_DIR, stage, PLAN_FILE)


def write_plan(out: str, stage: str, partitions: Iterable[Partition], keep: Iterable[str] = ()) -> None:
    """Record which partitions a stage has now, with their fingerprints and the upstream
    partitions they read: what `status` tells pending from done by, and what `current` trusts.
    `keep`: files the stage writes beside its partitions (not stale, see `stale`)."""
    fsio.write_json_atomic(
        plan_path(out, stage),
        {
            "stage": stage,
            "written": time.time(),
            **({"keep": sorted(keep)} if keep else {}),
            "partitions": [
                {"key": p.key, "inputs": list(p.inputs), "fingerprint": p.fingerprint,
                 **({"upstream": [list(u) for u in p.upstream]} if p.upstream else {})}
                for p in partitions
            ],
        },
    )  # fmt: skip


def _read_plan_file(out: str, stage: str) -> dict | None:
    try:
        return fsio.read_json(plan_path(out, stage))  # type: ignore[return-value]
    except FileNotFoundError:
        return None


def read_plan(out: str, stage: str) -> list[dict] | None:
    """The partitions of `stage`'s current plan (dicts: key, inputs, fingerprint, upstream), or
    None when the stage never planned in this run directory."""
    plan = _read_plan_file(out, stage)
    return None if plan is None else list(plan.get("partitions", []))


@dataclass(frozen=True)
class DonePartition:
    """A partition of a stage's current plan that is done with the plan's fingerprint."""

    key: str
    fingerprint: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]  # relative to the run directory
    manifest: dict = field(compare=False, repr=False)

    @property
    def ref(self) -> tuple[str, str, str]:
        """(stage, key, fingerprint): what a downstream partition records in its `upstream`."""
        return (self.manifest.get("stage", ""), self.key, self.fingerprint)


def _read_manifests(out: str, stage: str, keys: list[str], memo: dict | None = None) -> list[dict | None]:
    """Many manifests at once (threads: on an object store each read is a request). With `memo`
    (one dict per status call or stage run), each manifest is read once however often it is asked for."""
    cache: dict[str, dict | None] = {} if memo is None else memo.setdefault(("manifests", stage), {})
    missing = [k for k in dict.fromkeys(keys) if k not in cache]
    if len(missing) < 64 or fsio.is_local(out):  # local reads are not latency-bound: threads only add locking
        found = [read_manifest(out, stage, k) for k in missing]
    else:
        from concurrent.futures import ThreadPoolExecutor

        chunks = [missing[i : i + 256] for i in range(0, len(missing), 256)]
        with ThreadPoolExecutor(16) as pool:
            found = [m for chunk in pool.map(lambda ks: [read_manifest(out, stage, k) for k in ks], chunks) for m in chunk]
    cache.update(zip(missing, found))
    return [cache[k] for k in keys]


def _plan_file(out: str, stage: str, memo: dict | None) -> dict | None:
    """`stage`'s `_plan.json` (None: never planned), read once per `memo`."""
    if memo is None:
        return _read_plan_file(out, stage)
    if ("plan", stage) not in memo:
        memo[("plan", stage)] = _read_plan_file(out, stage)
    return memo[("plan", stage)]


def _plan(out: str, stage: str, memo: dict | None) -> list[dict] | None:
    """The partitions of `stage`'s plan (as `read_plan`), read once per `memo`."""
    plan = _plan_file(out, stage, memo)
    return None if plan is None else list(plan.get("partitions", []))


def current(out: str, stage: str, _memo: dict | None = None) -> list[DonePartition]:
    """The done partitions of `stage`'s current plan, in plan order: a manifest counts only if its
    key is in the plan, it is done with the plan's fingerprint, and every upstream partition it
    read is current with the fingerprint it read (checked up the whole chain). What a
    downstream stage reads; never a folder listing. A stage that never planned has none."""
    memo = {} if _memo is None else _memo
    if stage in memo:
        return memo[stage]
    plan = _plan(out, stage, memo) or []
    manifests = _read_manifests(out, stage, [e["key"] for e in plan], memo)
    found: list[DonePartition] = []
    upstream_fps: dict[str, dict[str, str]] = {}
    for entry, m in zip(plan, manifests):
        if not m or m.get("status") != "done":
            continue
        fp = entry.get("fingerprint", m.get("fingerprint"))  # plans written before fingerprints were recorded
        if m.get("fingerprint") != fp:
            continue
        ok = True
        for ustage, ukey, ufp in entry.get("upstream", ()):
            if ustage not in upstream_fps:
                done = current(out, ustage, memo)
                upstream_fps[ustage] = {d.key: d.fingerprint for d in done}
                upstream_fps[ustage][ALL] = digest((d.key, d.fingerprint) for d in done)
            if upstream_fps[ustage].get(ukey) != ufp:
                ok = False
                break
        if ok:
            m.setdefault("stage", stage)
            found.append(DonePartition(entry["key"], fp, tuple(m.get("inputs", ())), tuple(m.get("outputs", ())), m))
    memo[stage] = found
    return found


ALL = "*"
"""The key of an upstream reference to a whole stage (`stage_ref`)."""


def digest(pairs: Iterable[tuple[str, str]]) -> str:
    """One fingerprint of a set of (key, fingerprint) pairs, whatever their order."""
    return fingerprint(sorted(pairs))


def stage_ref(stage: str, parts: Iterable[Partition | DonePartition]) -> tuple[str, str, str]:
    """An upstream reference to every partition of `stage` at once: for a partition that reads
    all of its upstream (a dedup bucket reads every bucketing task's files), one entry instead of
    one per upstream partition, so a plan does not grow with the square of the input."""
    return (stage, ALL, digest((p.key, p.fingerprint) for p in parts))


def current_outputs(out: str, stage: str) -> list[str]:
    """Full paths of every output file of `stage`'s current partitions, in plan order."""
    return [fsio.join(out, rel) for d in current(out, stage) for rel in d.outputs]


@dataclass
class Stale:
    """What a stage's folder and state hold that its current plan does not: manifests of keys the
    plan no longer has, and files in its output folder that no planned partition claims."""

    stage: str
    manifests: list[str] = field(default_factory=list)  # keys
    files: list[str] = field(default_factory=list)  # paths relative to the run directory

    def __bool__(self) -> bool:
        return bool(self.manifests or self.files)


def _claimed(m: dict | None) -> list[str]:
    if not m:
        return []
    return list(m.get("outputs", ())) + list(m.get("previous_outputs", ()))


def _is_claimed(rel: str, claimed: set[str]) -> bool:
    """A file is claimed when it, or a folder above it, is an output (a model folder)."""
    while rel:
        if rel in claimed:
            return True
        rel = rel.rpartition("/")[0]
    return False


def stale(out: str, stage: str, out_dir: str | None = None, keep: Iterable[str] = (), _memo: dict | None = None) -> Stale:
    """The stale manifests and output files of `stage` (see `Stale`; temporary files of killed
    writes are `clean`'s, not counted here). `out_dir` is the stage's output folder relative to
    `out` (None: the registry's, or none); the files a stage writes beside its partitions are
    claimed by its plan's `keep` (and `keep` here). A stage that never planned has none."""
    found = Stale(stage)
    plan_file = _plan_file(out, stage, _memo)
    if plan_file is None:
        return found
    planned = {e["key"] for e in plan_file.get("partitions", [])}
    claimed = set(keep) | set(plan_file.get("keep", ()))
    keys = manifest_keys(out, stage)
    for key, m in zip(keys, _read_manifests(out, stage, keys, _memo)):
        if key in planned:
            claimed.update(_claimed(m))
        else:
            found.manifests.append(key)
    if out_dir is None:
        from .stages import registry

        row = next((r for r in registry.STAGE_TABLE if r.name == stage), None)
        # Only the Dask stages' folders hold nothing but their partitions' outputs (a training
        # folder also holds checkpoints and samples that no manifest lists).
        out_dir = row.out_dir if row is not None and row.curation else None
    if out_dir:
        prefix = out_dir.strip("/")
        for sub in fsio.files_under(fsio.join(out, prefix)):
            rel = f"{prefix}/{sub}"
            if not rel.rpartition("/")[2].startswith(fsio.TMP_PREFIX) and not _is_claimed(rel, claimed):
                found.files.append(rel)
    found.manifests.sort()
    return found


def remove_stale(out: str, stage: str, out_dir: str | None = None, keep: Iterable[str] = (), _memo: dict | None = None) -> Stale:
    """Remove what `stale` finds: the stale manifests with the outputs they list, then the
    unclaimed files. Returns what was removed."""
    found = stale(out, stage, out_dir, keep, _memo)
    for key in found.manifests:
        _remove(out, _claimed(_read_manifests(out, stage, [key], _memo)[0]))
        fs, p = fsio.fs_and_path(manifest_path(out, stage, key))
        if fs.exists(p):
            fs.rm(p)
    _remove(out, found.files)
    folders = {rel.rpartition("/")[0] for rel in found.files}
    for folder in sorted(folders, key=len, reverse=True):  # a recipe dropped from the workflow: its folder goes too
        fs, p = fsio.fs_and_path(fsio.join(out, folder))
        with contextlib.suppress(OSError, FileNotFoundError):
            if fs.isdir(p) and not fs.ls(p):
                fs.rmdir(p)
    return found


def run_stage(
    stage: str,
    partitions: list[Partition],
    fn: StageFn,
    out: str,
    wf: Any,
    client: Client,
    *,
    resources: dict[str, float] | None = None,
    keep: Iterable[str] = (),
) -> StageReport:
    """Run `fn` over `partitions` on `client`, skipping those already done with the same
    fingerprint (unless `wf.runner.force`). First the plan is recorded and what it no longer has
    is removed (`remove_stale`; `keep`: files the stage writes beside its partitions). Failed partitions (after `wf.runner.retries` Dask
    retries) get a manifest with status "failed" and their error, and their full traceback in
    `_state/logs/{stage}/{key}.log`; the others still complete."""
    t0 = time.time()
    keys = [p.key for p in partitions]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{stage}: duplicate partition keys")
    write_plan(out, stage, partitions, keep)
    memo: dict = {}  # the plan and every manifest of the stage read once
    remove_stale(out, stage, _memo=memo)
    report = StageReport(stage=stage, planned=len(partitions))
    todo: list[Partition] = []
    runner_cfg = getattr(wf, "runner", None)
    force = bool(getattr(runner_cfg, "force", False))
    for part, m in zip(partitions, _read_manifests(out, stage, keys, memo)):
        if force or not m or m.get("status") != "done" or m.get("fingerprint") != part.fingerprint:
            m = None
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
        # With many partitions the workflow travels once, as the result of one task they depend
        # on, not pickled into every partition's task: with tens of thousands of partitions the
        # copies held by the scheduler were most of the driver's memory. A task, not scattered
        # data, so a lost worker's copy is recomputed. Dask ignores where so small a dependency
        # lives only for a group of over twice the cluster's threads ("root-ish" tasks, queued to
        # whichever worker frees up); a smaller group all went to the worker that held it, and the
        # others waited for work stealing (bench_urllist: 4 shards on 2 workers, the second worker
        # idle ~1 s at the start and ~1.5 s between its shards). Such a group gets the workflow by
        # value: at most twice the cluster's threads in copies of ~8 KB.
        if not todo:
            shared_wf = None
        elif len(todo) > 2 * sum(client.nthreads().values()):
            shared_wf = client.submit(_workflow, wf, pure=False)
        else:
            shared_wf = wf
        # Each call's task keys are its own: a key reused by a second call on the same client
        # (a --force rerun, a rerun after a change the fingerprint does not see) can be handed
        # the first call's result while the scheduler still holds it, and the work is silently
        # skipped (seen under load in test_force_redoes_done_partitions). The id follows the
        # stage's name, so Dask's task group (the key up to its first word that is not all
        # letters) is the whole call's: "select-sd-00001" alone would make one group per recipe,
        # each too small to be root-ish even when the call is not.
        run_id = uuid.uuid4().hex[:8]
        for part in todo:
            fut = client.submit(
                _run_partition,
                stage,
                part,
                fn,
                out,
                shared_wf,
                key=f"{stage}-{run_id}-{part.key}-{part.fingerprint}",
                pure=False,
                retries=retries,
                resources=resources,
            )
            futures[fut] = part
        # results gathered in batches (one round trip per batch, not per partition), on this
        # client's loop: as_completed otherwise takes Dask's default client's, which in a process
        # that has had other clients (tests, notebooks) need not be this one
        for fut, result in as_completed(list(futures), loop=client.loop, with_results=True, raise_errors=False) if futures else ():
            part = futures[fut]
            if fut.status == "finished":
                m = result
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
                    previous_outputs=_claimed(read_manifest(out, stage, part.key)),
                )  # fmt: skip
                report.failed.append({"key": part.key, "error": failure["error"], "log": fsio.join(out, log)})
            fut.release()
            prog.update(task, advance=1, note=f"{len(report.failed)} failed" if report.failed else "")
    report.seconds = round(time.time() - t0, 3)
    return report


def stage_status(out: str, stage: str, _memo: dict | None = None) -> dict[str, list[str]]:
    """done / failed / pending partition keys of one stage of a run directory, by its current
    plan: done means `current` (done with the plan's fingerprint, upstream current); a planned
    partition done with another fingerprint, or whose upstream changed since, is pending.
    Manifests of keys the plan no longer has are stale (`stale`), not counted here. Pass the
    same `_memo` to every call of one status (and to `stale`): each manifest is then read once."""
    memo = {} if _memo is None else _memo
    plan = _plan(out, stage, memo)
    status: dict[str, list[str]] = {"done": [], "failed": [], "pending": []}
    if plan is None:  # no plan recorded: the manifests alone
        keys = manifest_keys(out, stage)
        for key, m in zip(keys, _read_manifests(out, stage, keys, memo)):
            st = (m or {}).get("status")
            if st in ("done", "failed"):
                status[st].append(key)
        return {k: sorted(v) for k, v in status.items()}
    done = {d.key for d in current(out, stage, memo)}
    keys = [e["key"] for e in plan]
    for key, m in zip(keys, _read_manifests(out, stage, keys, memo)):
        if key in done:
            status["done"].append(key)
        elif m and m.get("status") == "failed":
            status["failed"].append(key)
        else:
            status["pending"].append(key)
    return {k: sorted(v) for k, v in status.items()}

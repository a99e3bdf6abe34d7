"""The funnel: pairs in and out of every stage, with drop reasons, per subset, from the manifests.

Each done partition of a stage wrote `_state/{stage}/{key}.json` with `kept` {subset: n} and
`drops` {subset or "*": {reason: n}} (runner.py). A big run has one manifest per partition,
possibly hundreds of thousands on an object store, so they are read and summed by Dask tasks
(a bag), and only the per-stage sums come back to the driver.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import dask.bag as db

from .. import fsio
from ..schema import FUNNEL_STAGES, STATE_DIR
from .model import FunnelStage

_PER_TASK = 256  # manifests read by one task


def _key(path: str) -> str:
    return path.rpartition("/")[2][: -len(".json")]


def _sum_manifests(items: Iterable[tuple[str, str, bool, str | None]]) -> list[dict]:
    """Read and sum a batch of (stage, manifest path, is_phase, the plan's fingerprint): one dict
    per stage. A stage's internal phases (`_state/dedup.reduce/`) contribute their drop reasons
    to the stage; its partitions, kept rows and counts come from the stage's own (final)
    manifests. A manifest done with another fingerprint than its plan's is an older result of
    that partition: not counted (the runner's rule)."""
    acc: dict[str, dict] = {}
    for stage, path, is_phase, planned_fp in items:
        key = _key(path)
        try:
            m = fsio.read_json(path)
        except Exception:  # unreadable manifest: that partition is not done (runner's rule)
            continue
        if not isinstance(m, dict):
            continue
        a = acc.setdefault(stage, {"stage": stage, "seen": set(), "done": 0, "failed": 0, "kept": Counter(),
                                   "drops": {}, "counts": Counter()})
        status = m.get("status")
        if status == "done" and planned_fp is not None and m.get("fingerprint") != planned_fp:
            continue
        if is_phase:
            if status == "done":
                for subset, reasons in (m.get("drops") or {}).items():
                    a["drops"].setdefault(subset, Counter()).update(reasons)
            continue
        if status == "done":
            a["done"] += 1
            a["seen"].add(key)
            a["kept"].update(m.get("kept") or {})
            a["counts"].update({k: v for k, v in (m.get("counts") or {}).items() if isinstance(v, int)})
            for subset, reasons in (m.get("drops") or {}).items():
                a["drops"].setdefault(subset, Counter()).update(reasons)
        elif status == "failed":
            a["failed"] += 1
            a["seen"].add(key)
    return list(acc.values())


def _planned(run_dir: str, stage: str) -> dict[str, str | None] | None:
    """Key -> fingerprint of the stage's current plan (None: a plan written before plans
    recorded fingerprints), or None when the stage has no plan."""
    path = fsio.join(run_dir, STATE_DIR, stage, "_plan.json")
    if not fsio.exists(path):
        return None
    plan = fsio.read_json(path)
    return {p["key"]: p.get("fingerprint") for p in plan["partitions"]}  # type: ignore[index]


def compute_funnel(run_dir: str, client) -> list[FunnelStage]:
    """The funnel of a run directory: one FunnelStage per stage that has a plan or manifests."""
    items: list[tuple[str, str, bool, str | None]] = []
    plans: dict[str, dict[str, str | None] | None] = {}
    for stage in FUNNEL_STAGES:
        phases = [stage] + sorted(
            d.rstrip("/").rpartition("/")[2] for d in fsio.glob(fsio.join(run_dir, STATE_DIR, f"{stage}.*"))
        )
        for phase in phases:
            paths = [p for p in fsio.glob(fsio.join(run_dir, STATE_DIR, phase, "*.json"))
                     if not p.rpartition("/")[2].startswith("_")]
            planned = _planned(run_dir, phase)
            if phase == stage:
                plans[stage] = planned
            # A manifest whose key the current plan no longer has belongs to an older plan: not counted.
            items += [(stage, p, phase != stage, None if planned is None else planned[_key(p)])
                      for p in paths if planned is None or _key(p) in planned]
    partials: list[dict] = []
    if items:
        bag = db.from_sequence(items, partition_size=_PER_TASK).map_partitions(_sum_manifests)
        partials = client.compute(bag).result()
    out: list[FunnelStage] = []
    for stage in FUNNEL_STAGES:
        mine = [p for p in partials if p["stage"] == stage]
        if not mine and plans[stage] is None:
            continue
        f = FunnelStage(stage=stage)
        kept: Counter = Counter()
        counts: Counter = Counter()
        drops: dict[str, Counter] = {}
        seen: set[str] = set()
        for p in mine:
            f.done += p["done"]
            f.failed += p["failed"]
            seen |= p["seen"]
            kept.update(p["kept"])
            counts.update(p["counts"])
            for subset, reasons in p["drops"].items():
                drops.setdefault(subset, Counter()).update(reasons)
        f.pending = len(set(plans[stage] or ()) - seen)
        f.kept = dict(kept)
        f.counts = dict(counts)
        f.drops = {s: dict(sorted(r.items(), key=lambda kv: (-kv[1], kv[0]))) for s, r in drops.items()}
        out.append(f)
    return out

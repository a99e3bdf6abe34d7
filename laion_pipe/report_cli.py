"""What the terminal shows after a stage, after a run, and for `laion-pipe status`."""
from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from . import fsio
from .runner import LOG_DIR, StageReport, current, read_manifest, read_plan, stage_status, stale
from .schema import STATE_DIR
from .stages import registry

console = Console(stderr=True, soft_wrap=True)  # never break a path or URL across lines


def _drops_line(drops: dict[str, Counter], limit: int = 6) -> str:
    total: Counter = Counter()
    for reasons in drops.values():
        total.update(reasons)
    return ", ".join(f"{r} {n:,}" for r, n in total.most_common(limit))


def print_stage_report(report: StageReport) -> None:
    kept = ", ".join(f"{s} {n:,}" for s, n in sorted(report.kept.items())) or "-"
    line = (f"[bold]{report.stage}[/bold]: {report.done} done, {report.skipped} skipped (already done), "
            f"{len(report.failed)} failed of {report.planned} partitions in {report.seconds:.1f}s; kept: {kept}")
    console.print(line)
    dl = _drops_line(report.drops)
    if dl:
        console.print(f"  dropped: {dl}")
    for f in report.failed[:10]:
        log = f"\n    traceback: {f['log']}" if f.get("log") else ""
        console.print(f"  [red]failed[/red] {f['key']}: {f['error']}{log}")
    if len(report.failed) > 10:
        console.print(f"  ... and {len(report.failed) - 10} more (laion-pipe status)")


def print_run_summary(reports: Sequence[StageReport], out: str, stages: Sequence[str], show_report: bool = True) -> None:
    table = Table(title=f"run summary: {out}")
    for col in ("stage", "partitions", "done", "skipped", "failed", "kept", "dropped", "seconds"):
        table.add_column(col, justify="right" if col not in ("stage",) else "left")
    for r in reports:
        dropped = sum(sum(c.values()) for c in r.drops.values())
        table.add_row(r.stage, str(r.planned), str(r.done), str(r.skipped), str(len(r.failed)),
                      f"{sum(r.kept.values()):,}", f"{dropped:,}", f"{r.seconds:.1f}")
    console.print(table)
    not_run = [s for s in stages if s not in {r.stage for r in reports}]
    if not_run:
        console.print(f"[yellow]not run[/yellow] (an earlier stage has failed partitions): {', '.join(not_run)}")
    if any(r.failed for r in reports):
        console.print(f"[red]incomplete[/red]: see `laion-pipe status {out}`; rerun to retry failed partitions")
    report_html = fsio.join(out, "stats", "report.html")
    if "stats" not in stages and stats_out_of_date(out):
        console.print(f"[yellow]note[/yellow]: {fsio.join(out, 'stats')}/ (and report.html) describe an earlier dataset: "
                      f"`laion-pipe stats {out}` brings them up to date")
    elif show_report and fsio.exists(report_html):
        console.print(f"report: {report_html}")


def stats_out_of_date(out: str) -> bool:
    """Whether the run has statistics that no longer describe its dataset (select ran since)."""
    plan = read_plan(out, "stats")
    return bool(plan) and not current(out, "stats")


def _stage_names(out: str) -> list[str]:
    """Stages with state in table order (stages the table does not know last); internal phases
    (`dedup.bucket`) just before their stage."""
    fs, p = fsio.fs_and_path(fsio.join(out, STATE_DIR))
    try:
        found = {e.rstrip("/").rpartition("/")[2] for e in fs.ls(p, detail=False) if fs.isdir(e)} - {LOG_DIR}
    except FileNotFoundError:
        found = set()

    order = registry.names()

    def rank_of(name: str) -> tuple[int, int, str]:
        base, _, phase = name.partition(".")
        rank = order.index(base) if base in order else len(order)
        return (rank, 0 if phase else 1, name)

    return sorted(found, key=rank_of)


def _print_work_files(out: str) -> None:
    """Which work files the run holds, and why (a stage deletes its own when it completes)."""
    from .clean import work_removed, work_summary

    for w in work_summary(out):
        Console().print(f"work files: {fsio.join(out, '_work', w.stage)} ({w.files:,} files, {w.bytes / 1e6:,.1f} MB), "
                        f"kept while {w.stage} is incomplete (resume needs them); `laion-pipe clean {out}` removes them")
    for stage in registry.names():
        if work_removed(out, stage):
            Console().print(f"work files of {stage}: removed (when it completed, or by clean)")


def print_status(out: str, as_json: bool = False) -> int:
    """Print done / failed / pending per stage; exit code 1 when anything failed or is pending,
    2 when `out` is not a run directory (it has no `_state/`)."""
    if not fsio.exists(fsio.join(out, STATE_DIR)):
        what = "does not exist" if not fsio.exists(out) else f"has no {STATE_DIR}/ (the state every stage writes)"
        console.print(f"[red]error:[/red] {out} is not a run directory: it {what}")
        return 2
    result = {}
    memo: dict = {}
    leftovers = {}
    for stage in _stage_names(out):
        st = stage_status(out, stage, memo)
        found = stale(out, stage)
        if found:
            leftovers[stage] = found
            st = {**st, "stale_manifests": found.manifests, "stale_files": found.files}
        if any(st.values()):
            result[stage] = st
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        if not result:
            console.print(f"no stage state under {out}")
        table = Table(title=f"status: {out}")
        for col in ("stage", "done", "failed", "pending", "stale"):
            table.add_column(col, justify="left" if col == "stage" else "right")
        for stage, st in result.items():
            n_stale = len(st.get("stale_manifests", ())) + len(st.get("stale_files", ()))
            table.add_row(stage, str(len(st["done"])), str(len(st["failed"])), str(len(st["pending"])), str(n_stale))
        Console().print(table)
        for stage, st in result.items():
            for key in st["failed"]:
                m = read_manifest(out, stage, key) or {}
                log = f" (traceback: {fsio.join(out, m['log'])})" if m.get("log") else ""
                Console().print(f"[red]failed[/red] {stage}/{key}: {m.get('error', '?')}{log}")
        for stage, found in leftovers.items():
            shown = ", ".join(found.files[:3] + [f"{STATE_DIR}/{stage}/{k}.json" for k in found.manifests[:3]])
            Console().print(f"[yellow]stale[/yellow] {stage}: {len(found.manifests)} partitions and {len(found.files)} files "
                            f"its current plan does not have ({shown}{', ...' if len(found.files) + len(found.manifests) > 6 else ''}); "
                            f"no stage reads them; `laion-pipe clean {out}` removes them, as the stage's next run would")
    if not as_json:
        _print_work_files(out)
    incomplete = any(st["failed"] or st["pending"] for st in result.values())
    sys.stdout.flush()
    return 1 if incomplete else 0

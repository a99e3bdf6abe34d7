"""`laion-pipe demo`: the demo world, every stage on a LocalCluster, then the statistics.

This is the embedded default the README's first command runs: no data, weights or services to
set up. The world's server runs in this process on 127.0.0.1; the workers (separate processes)
download from it through the same guarded client as a real run, with 127.0.0.1/32 allowed.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import yaml
from rich.console import Console

from ..config import Workflow, workflow_from_dict
from .world import World, WorldSpec, build_world

console = Console(stderr=True)


def demo_workflow_path() -> Path:
    """The demo workflow shipped inside the package (workflows/demo.yaml links to it)."""
    return Path(str(resources.files("laion_pipe.demo") / "workflow.yaml"))


def demo_workflow(inputs: Sequence[str], out: str, overrides: Sequence[str] = ()) -> Workflow:
    data = yaml.safe_load(demo_workflow_path().read_text())
    data["inputs"] = list(inputs)
    data["out"] = out
    return workflow_from_dict(data, list(overrides))


MODEL_STAGES: tuple[str, ...] = ("train", "evaluate")
"""What the demo runs after the curation stages: the data judged by the model it trains."""


def run_demo(out: str, overrides: Sequence[str] = (), spec: WorldSpec | None = None, client=None,
             *, train: bool = False, from_list: bool = False) -> tuple[World, list]:
    """Build the world under `out/world`, run all curation stages into `out` (then, with `train`,
    train the demo model on the curated shards and evaluate it); returns (world, reports).
    `from_list`: start from the world's URL list instead of its WAT files (the same pages).
    The caller stops the world's server (`world.stop()`)."""
    from ..cluster import open_client
    from ..pipeline import PIPELINE_STAGES, run_stages
    from ..report_cli import print_stage_report

    stages = [*PIPELINE_STAGES, *(MODEL_STAGES if train else ())]
    world = build_world(Path(out) / "world", spec)
    try:
        wf = demo_workflow([world.list_path] if from_list else world.wat_paths, out, overrides)
        if client is not None:
            reports = run_stages(wf, out, stages, client, on_report=print_stage_report)
        else:
            with open_client(wf.cluster) as c:
                reports = run_stages(wf, out, PIPELINE_STAGES, c, on_report=print_stage_report)
            # training and evaluation run in this process (accelerate), with the workers' memory free
            if train:
                reports += run_stages(wf, out, MODEL_STAGES, None, on_report=print_stage_report)
    except BaseException:
        world.stop()
        raise
    return world, reports


def eval_line(out: str) -> str | None:
    """One line of the demo model's evaluation metrics, or None when evaluate wrote none."""
    import json

    found = sorted(Path(out, "eval").glob("*/metrics.json"))
    if not found:
        return None
    m = json.loads(found[-1].read_text())
    fd = "n/a" if m.get("fd_clip") is None else f"{m['fd_clip']:.3f} ({m.get('n_images')} vs {m.get('n_real')} images)"
    return (f"model {found[-1].parent.name}: CLIP score {m['clip_score']:.3f}, top-1 prompt retrieval "
            f"{m['retrieval_top1']:.2f} (chance {m['retrieval_chance']:.2f}), FD-CLIP {fd} "
            f"on {m.get('n_prompts', '?')} held-out prompts ({found[-1].parent / 'grid.png'})")


def main_demo(out: str = "laion_demo", overrides: Sequence[str] = (), train: bool = True, from_list: bool = False) -> int:
    from ..report_cli import print_run_summary
    from ..stages.stats import load_result
    from ..stats.render import print_table

    t0 = time.time()
    out = str(Path(out).resolve())
    source = "its URL list" if from_list else "its WAT files"
    console.print(f"[bold]laion-pipe demo[/bold]: building the demo world and running every stage from {source} into {out}")
    world, reports = run_demo(out, overrides, train=train, from_list=from_list)
    expected = ["stats", *(MODEL_STAGES if train else ())]
    done = [r.stage for r in reports]
    complete = done[-len(expected):] == expected and not any(r.failed for r in reports)
    try:
        print_run_summary(reports, out, done, show_report=False)
        stats = next((r for r in reports if r.stage == "stats"), None)
        if stats is not None and not stats.failed:
            # the funnel's reason lists read badly wrapped at a pipe's default 80 columns
            print_table(load_result(out), Console(width=None if sys.stdout.isatty() else 160))
            line = eval_line(out) if train else None
            if line:
                Console().print(f"evaluation of the demo model trained on the curated shards: {line}",
                                soft_wrap=True, highlight=False)
            Console().print(f"report: {Path(out) / 'stats' / 'report.html'}", soft_wrap=True)
        if any(r.stage == "index" and not r.failed for r in reports):
            from ..serve import serve_command

            Console().print(f"search its images (by text, by example; export a blocklist): {serve_command(out)}",
                            soft_wrap=True, highlight=False)
        console.print(f"demo finished in {time.time() - t0:.0f}s")
    finally:
        world.stop()
    return 0 if complete else 1

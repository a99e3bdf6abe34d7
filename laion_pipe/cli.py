"""The `laion-pipe` command: one function per kind of subcommand, nothing else.

The stage subcommands (`laion-pipe dedup --out DIR`, ...) are built from the stage table
(`stages/registry.py`) and share one handler; `run`, `stats`, `demo`, `clean`, `models`, `status` and
`serve` (not a stage: a web page over a run) have their own.

Exit codes: 0 complete; 1 the run is incomplete (some partitions failed, see `laion-pipe status`);
2 a usage or configuration error, reported before any work starts.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence

from rich.console import Console

from .config import ConfigError
from .stages import registry

console = Console(stderr=True)

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE = 0, 1, 2


def _common(p: argparse.ArgumentParser, out_required: bool = False) -> None:
    p.add_argument("--out", "-o", required=out_required, metavar="DIR",
                   help="run directory (local path or fsspec URL such as s3://bucket/run); "
                        "its saved workflow is reused when --workflow is not given")
    p.add_argument("--workflow", "-w", metavar="FILE",
                   help="workflow YAML (see workflows/); default: the run directory's saved workflow, else built-in defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a workflow value, e.g. --set download.timeout=5 (repeatable; values parsed as YAML)")
    p.add_argument("--force", action="store_true", help="redo partitions even if their manifest says done")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in batch job logs)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="also print Dask's full traceback of every failed attempt (always in _state/logs/ of the run)")


def _stage_inputs(args: argparse.Namespace, row) -> tuple[list[str], dict]:
    """A stage subcommand's extra options, split into workflow overrides and `run` kwargs."""
    import json

    overrides, kwargs = [], {}
    for opt in row.options:
        value = getattr(args, opt.dest)
        if value is None or value is False or value == []:
            continue
        if opt.kwarg is not None:
            kwargs[opt.kwarg] = value
        else:
            overrides.append(f"{opt.override}={json.dumps(value)}")
    return overrides, kwargs


def _force(args: argparse.Namespace, wf) -> bool:
    """`--force`, or `--set runner.force=...` on this command line (it used to be overwritten and
    silently ignored); never a force saved with the run's workflow by an earlier command."""
    if args.force:
        return True
    given = any(o.split("=", 1)[0].strip() == "runner.force" for o in args.overrides)
    return bool(wf.runner.force) if given else False


def cmd_stage(args: argparse.Namespace) -> int:
    """`laion-pipe STAGE --out DIR ...`: one stage of the table, with the run's saved workflow."""
    from .cluster import open_client
    from .pipeline import check_inputs, resolve_workflow, run_stages, stage
    from .report_cli import print_stage_report

    row = stage(args.stage)
    extra, kwargs = _stage_inputs(args, row)
    wf, out = resolve_workflow(args.workflow, args.out, [*extra, *args.overrides])
    wf.runner.progress = wf.runner.progress and not args.no_progress
    wf.runner.force = _force(args, wf)
    tasks = check_inputs(out, [row.name], wf)  # before a cluster starts
    with open_client(wf.cluster, max_tasks=tasks, quiet_task_errors=not args.verbose) if row.dask else contextlib.nullcontext() as client:
        reports = run_stages(wf, out, [row.name], client, on_report=print_stage_report, **{row.name: kwargs})
    return EXIT_INCOMPLETE if any(r.failed for r in reports) else EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    """`laion-pipe stats PATH...`: a run directory uses the run's saved workflow (like the other
    stage commands); parquet files in LAION's schema use --workflow or the defaults."""
    from .config import load_workflow
    from .pipeline import resolve_workflow
    from .stages.stats import main_stats
    from .stats.aggregate import is_run_dir

    paths = list(args.paths)
    if len(paths) == 1 and is_run_dir(paths[0]):
        wf, _ = resolve_workflow(args.workflow, paths[0], args.overrides)
    else:
        wf = load_workflow(args.workflow, args.overrides)
    if args.no_progress:
        wf.runner.progress = False
    return main_stats(paths, out=args.out, subset=args.subset, as_json=args.json, swap_wh=args.swap_wh, wf=wf)


def cmd_run(args: argparse.Namespace) -> int:
    from .cluster import open_client
    from .pipeline import check_inputs, parse_stages, resolve_workflow, run_stages
    from .report_cli import print_run_summary, print_stage_report

    wf, out = resolve_workflow(args.workflow_file, args.out, args.overrides)
    wf.runner.progress = wf.runner.progress and not args.no_progress
    wf.runner.force = _force(args, wf)
    stages = parse_stages(args.stages)
    if args.dry_run:
        from .cluster import job_script

        console.print(f"workflow {wf.name!r}: stages {', '.join(stages)} -> {out}")
        from .estimate import dry_run_estimate

        print(dry_run_estimate(wf, stages), file=sys.stderr)  # stderr: stdout stays the job script
        if wf.cluster.kind in ("slurm", "pbs", "kubernetes"):
            print(job_script(wf.cluster))
        return EXIT_OK
    check_inputs(out, stages, wf)  # before a cluster starts
    with open_client(wf.cluster, quiet_task_errors=not args.verbose) as client:
        console.print(f"workflow {wf.name!r} -> {out}; dask dashboard: {client.dashboard_link}")
        reports = run_stages(wf, out, stages, client, on_report=print_stage_report)
    print_run_summary(reports, out, stages)
    complete = len(reports) == len(stages) and not any(r.failed for r in reports)
    return EXIT_OK if complete else EXIT_INCOMPLETE


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo.run import main_demo

    return main_demo(out=args.out, overrides=args.overrides, train=not args.no_train, from_list=args.from_list)


def cmd_status(args: argparse.Namespace) -> int:
    from .report_cli import print_status

    return print_status(args.dir, as_json=args.json)


def cmd_clean(args: argparse.Namespace) -> int:
    """`laion-pipe clean DIR [--stage S]`: remove a run's stale outputs, work files and leftover temporary files."""
    from . import fsio
    from .clean import clean
    from .schema import STATE_DIR

    if not fsio.exists(fsio.join(args.dir, STATE_DIR)):
        raise ConfigError(f"{args.dir} is not a run directory (no {STATE_DIR}/ in it): nothing to clean")
    if args.stage:
        from .pipeline import stage

        stage(args.stage)  # an unknown name is a usage error
    removed = clean(args.dir, args.stage)
    console.print(f"removed {removed['work_files']:,} work files ({removed['work_bytes'] / 1e6:,.1f} MB), "
                  f"{removed['temporary_files']:,} temporary files and {removed['stale_partitions']:,} stale partitions "
                  f"with {removed['stale_files']:,} stale files from {args.dir}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """`laion-pipe serve RUN [--port N] [--host H]`: the search page over a run's index."""
    from .serve import main_serve

    return main_serve(args.dir, host=args.host, port=args.port)


def cmd_models(args: argparse.Namespace) -> int:
    """`laion-pipe models fetch|check [WORKFLOW]`: provision and verify the scoring models' weights."""
    from .models.provision import main_models

    return main_models(args.action, args.workflow_file, args.overrides, args.cache_dir, args.device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="laion-pipe",
        description="LAION-style image-text dataset curation from Common Crawl, on Dask. "
        f"Stages: {' -> '.join(registry.names(curation=True))}; each resumable.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run every stage of a workflow (resumable)",
                       description="Run the stages of WORKFLOW in order. Finished partitions are skipped, so rerunning "
                                   "after a crash or a kill continues where it stopped.")
    p.add_argument("workflow_file", metavar="WORKFLOW.yaml", help="the workflow file (see workflows/)")
    _common(p)
    p.set_defaults(workflow=None)
    p.add_argument("--stages", metavar="LIST",
                   help=f"stages to run (default: {','.join(registry.names(curation=True))}): a comma list (extract,dedup) or a range "
                        "(download: = from download to stats, :select = up to select, select:stats)")
    p.add_argument("--dry-run", action="store_true", help="validate the workflow and print the plan (and the batch job script / pod spec)")
    p.set_defaults(fn=cmd_run)

    for row in registry.STAGE_TABLE:
        if not row.cli:
            continue
        p = sub.add_parser(row.name, help=row.help, description=row.description)
        for opt in row.options:
            p.add_argument(*opt.flags, **opt.argparse_kwargs())
        _common(p, out_required=True)
        p.set_defaults(fn=cmd_stage, stage=row.name)

    stats = registry.get("stats")
    p = sub.add_parser("stats", help=stats.help, description=stats.description)
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="a run directory, or parquet files, folders or globs in LAION's published schema "
                        "(quote a glob to let laion-pipe expand it, e.g. 'laion2B-en/*.parquet')")
    p.add_argument("--out", "-o", metavar="DIR", help="where to write stats/ (default: PATH/stats for a run directory)")
    p.add_argument("--workflow", "-w", metavar="FILE",
                   help="workflow YAML for the stats settings; default: a run directory's saved workflow, else built-in defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a workflow value")
    p.add_argument("--subset", metavar="NAME", help="label for LAION-schema parquet input (e.g. en, multi, nolang)")
    p.add_argument("--json", action="store_true", help="print the table as JSON (one object per subset)")
    p.add_argument("--swap-wh", action="store_true", help="swap WIDTH and HEIGHT (LAION's legacy files have them swapped)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in batch job logs)")
    p.set_defaults(fn=cmd_stats)

    p = sub.add_parser("demo", help="the whole pipeline on a small world built on 127.0.0.1: curation, statistics, a model trained and judged",
                       description="Build a small demo world (an image server on 127.0.0.1 and WAT pages in several languages), "
                                   "run every curation stage on a LocalCluster with the shipped demo models, then train the small demo "
                                   "diffusion model on the curated shards and evaluate it; print the funnel, the statistics and the "
                                   "model's metrics.")
    p.add_argument("--out", "-o", metavar="DIR", default="laion_demo", help="run directory (default: ./laion_demo)")
    p.add_argument("--no-train", action="store_true",
                   help="stop after the curation stages and the statistics (skip training and evaluating the demo model)")
    p.add_argument("--from-list", action="store_true",
                   help="start from the world's URL list (a parquet of the same pages, as img2dataset takes) instead of its WAT files")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a workflow value")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("clean", help="remove a run's stale outputs, work files (_work/) and leftover temporary files",
                       description="Remove the partitions and files that a stage's current plan no longer has (left by "
                                   "an earlier plan: `laion-pipe status` lists them as stale; no stage reads them, and "
                                   "the stage's next run removes them too), the work files stages keep between their "
                                   "phases (_work/STAGE/, e.g. dedup's buckets) and temporary files left by killed writes. "
                                   "A stage deletes its own work files when it completes; removing them earlier makes "
                                   "its next run start its phases again from its inputs.")
    p.add_argument("dir", metavar="DIR", help="a run directory")
    p.add_argument("--stage", metavar="S", help="only this stage's stale outputs and work files (default: every stage's)")
    p.set_defaults(fn=cmd_clean)

    p = sub.add_parser("serve", help="a local search page over a run's images: text or image queries, filters, "
                                     "exports as URL lists or blocklists, the report",
                       description="Serve a web page on 127.0.0.1 to search a run directory's index (built by "
                                   "`laion-pipe index`): a text query (the run's CLIP text tower) or an image (upload, "
                                   "or 'more like this' on a result) shows the nearest pictures with caption, URL, subset, "
                                   "scores and whether select kept them (or why not); filters on subset, kept/dropped and "
                                   "score ranges; a result set exports as a URL list or as a blocklist that a rerun of "
                                   "select applies. It also serves the run's stats/report.html.")
    p.add_argument("dir", metavar="RUN", help="a local run directory")
    p.add_argument("--port", type=int, default=8765, help="port (default: 8765)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1; the page has no authentication)")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("models", help="download the models' weights for offline machines (fetch), or load and test them (check)",
                       description="fetch: download every weight WORKFLOW's models need (CLIP checkpoints, NSFW / watermark / "
                                   "aesthetic heads, tokenizer files) into the model cache, checking pinned sha256s and recording "
                                   "them; compute nodes without internet then run from that folder. check: say which of them are "
                                   "missing (exit 2), load every model and print what it computes on a small test picture.")
    p.add_argument("action", choices=["fetch", "check"], help="fetch: download into the cache; check: verify and run")
    p.add_argument("workflow_file", nargs="?", metavar="WORKFLOW.yaml", help="workflow whose models to use (default: LAION-5B's)")
    p.add_argument("--cache-dir", metavar="DIR", help="model cache folder (default: models.cache_dir, else $LAION_PIPE_CACHE/models)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a workflow value")
    p.add_argument("--device", default="auto", help="check: where to run the models (auto, cpu, cuda, cuda:1)")
    p.set_defaults(fn=cmd_models)

    p = sub.add_parser("status", help="which partitions of which stage are done, failed or pending")
    p.add_argument("dir", metavar="DIR", help="a run directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(fn=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as e:
        console.print(f"[red]error:[/red] {e}")
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into `head`: not an error of ours
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: finished partitions are kept; run the same command again to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())

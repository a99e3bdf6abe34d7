"""The `laion-pipe` command: one function per subcommand, nothing else.

Exit codes: 0 complete; 1 the run is incomplete (some partitions failed, see `laion-pipe status`);
2 a usage or configuration error, reported before any work starts.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console

from .config import ConfigError

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


def _stage_cmd(args: argparse.Namespace, stage: str, extra_overrides: Sequence[str] = (), **stage_kwargs) -> int:
    from .cluster import open_client
    from .pipeline import resolve_workflow, run_stages
    from .report_cli import print_stage_report

    wf, out = resolve_workflow(args.workflow, args.out, [*extra_overrides, *args.overrides])
    wf.runner.progress = wf.runner.progress and not args.no_progress
    wf.runner.force = args.force
    with open_client(wf.cluster) as client:
        reports = run_stages(wf, out, [stage], client, on_report=print_stage_report, **{stage: dict(stage_kwargs)})
    return EXIT_INCOMPLETE if any(r.failed for r in reports) else EXIT_OK


def cmd_extract(args: argparse.Namespace) -> int:
    extra = []
    if args.inputs:
        import json

        extra.append("inputs=" + json.dumps(args.inputs))
    if args.max_files is not None:
        extra.append(f"extract.max_files={args.max_files}")
    return _stage_cmd(args, "extract", extra)


def cmd_dedup(args: argparse.Namespace) -> int:
    return _stage_cmd(args, "dedup")


def cmd_download(args: argparse.Namespace) -> int:
    return _stage_cmd(args, "download", retry_failed=args.retry_failed)


def cmd_score(args: argparse.Namespace) -> int:
    return _stage_cmd(args, "score")


def cmd_select(args: argparse.Namespace) -> int:
    return _stage_cmd(args, "select")


def cmd_stats(args: argparse.Namespace) -> int:
    from .config import load_workflow
    from .stages.stats import main_stats

    wf = load_workflow(args.workflow, args.overrides)
    return main_stats(args.paths, out=args.out, subset=args.subset, as_json=args.json, swap_wh=args.swap_wh, wf=wf)


def cmd_run(args: argparse.Namespace) -> int:
    from .cluster import open_client
    from .pipeline import parse_stages, resolve_workflow, run_stages
    from .report_cli import print_run_summary, print_stage_report

    wf, out = resolve_workflow(args.workflow_file, args.out, args.overrides)
    wf.runner.progress = wf.runner.progress and not args.no_progress
    wf.runner.force = args.force
    stages = parse_stages(args.stages)
    if args.dry_run:
        from .cluster import job_script

        console.print(f"workflow {wf.name!r}: stages {', '.join(stages)} -> {out}")
        if wf.cluster.kind in ("slurm", "pbs", "kubernetes"):
            print(job_script(wf.cluster))
        return EXIT_OK
    with open_client(wf.cluster) as client:
        console.print(f"workflow {wf.name!r} -> {out}; dask dashboard: {client.dashboard_link}")
        reports = run_stages(wf, out, stages, client, on_report=print_stage_report)
    print_run_summary(reports, out, stages)
    complete = len(reports) == len(stages) and not any(r.failed for r in reports)
    return EXIT_OK if complete else EXIT_INCOMPLETE


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo.run import main_demo

    return main_demo(out=args.out, overrides=args.overrides)


def cmd_status(args: argparse.Namespace) -> int:
    from .report_cli import print_status

    return print_status(args.dir, as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="laion-pipe",
        description="LAION-style image-text dataset curation from Common Crawl, on Dask. "
        "Stages: extract -> dedup -> download -> score -> select -> stats; each resumable.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run every stage of a workflow (resumable)",
                       description="Run the stages of WORKFLOW in order. Finished partitions are skipped, so rerunning "
                                   "after a crash or a kill continues where it stopped.")
    p.add_argument("workflow_file", metavar="WORKFLOW.yaml", help="the workflow file (see workflows/)")
    _common(p)
    p.set_defaults(workflow=None)
    p.add_argument("--stages", metavar="LIST",
                   help="stages to run: a comma list (extract,dedup), or a range (download: = from download on, :select = up to select)")
    p.add_argument("--dry-run", action="store_true", help="validate the workflow and print the plan (and the batch job script / pod spec)")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("extract", help="Common Crawl WAT/WARC -> candidates/{en,multi,nolang}/part-NNNNN.parquet",
                       description="Parse WAT or WARC files (gzip or plain, detected from content) into (image URL, alt text) "
                                   "pairs with LAION-5B's rules, detect each alt text's language with fastText and split into "
                                   "EN / MULTI / NOLANG. One output partition per input file.")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="local paths, globs, fsspec URLs (s3://, https://) or a crawl id such as CC-MAIN-2023-14; "
                        "default: the workflow's inputs")
    p.add_argument("--max-files", type=int, metavar="N", help="with a crawl id: take the first N WAT files of its wat.paths.gz")
    _common(p, out_required=True)
    p.set_defaults(fn=cmd_extract)

    p = sub.add_parser("dedup", help="global exact dedup and blocklists -> unique/{subset}/part-NNNNN.parquet",
                       description="Deduplicate all candidates of the run (by url, or by url+text), apply domain / URL-hash / "
                                   "already-curated blocklists, and cut the survivors into fixed-size parts (one download shard each).")
    _common(p, out_required=True)
    p.set_defaults(fn=cmd_dedup)

    p = sub.add_parser("download", help="fetch images -> images/{subset}/NNNNN.tar (img2dataset format)",
                       description="Download, check and resize the images of every unique part, refusing non-public addresses "
                                   "and honouring X-Robots-Tag opt-outs. Output is img2dataset's format.")
    _common(p, out_required=True)
    p.add_argument("--retry-failed", action="store_true",
                   help="refetch only samples that failed for a transient reason (timeouts, 5xx, 429) in done shards, and merge them")
    p.set_defaults(fn=cmd_download)

    p = sub.add_parser("score", help="CLIP similarity, punsafe, pwatermark, aesthetic -> scores/{subset}/NNNNN.parquet",
                       description="Score every downloaded image: image-text cosine similarity, NSFW and watermark probabilities "
                                   "and aesthetic score. Uses a GPU when the worker has one.")
    _common(p, out_required=True)
    p.set_defaults(fn=cmd_score)

    p = sub.add_parser("select", help="apply thresholds -> dataset/{name}/NNNNN.tar + parquet (LAION-5B columns)",
                       description="Apply the thresholds and subset recipes to the scores and write the final WebDataset shards. "
                                   "Changing a threshold reruns only this stage.")
    _common(p, out_required=True)
    p.set_defaults(fn=cmd_select)

    p = sub.add_parser("stats", help="LAION's subset statistics tables, plots and report.html",
                       description="Compute the LAION-5B statistics table per subset (counts by resolution, %% NSFW, %% watermark, "
                                   "average text length), top languages and domains, histograms and the funnel.")
    p.add_argument("path", metavar="PATH", help="a run directory, or parquet files / a glob in LAION's published schema")
    p.add_argument("--out", "-o", metavar="DIR", help="where to write stats/ (default: PATH/stats for a run directory)")
    p.add_argument("--workflow", "-w", metavar="FILE", help="workflow YAML for the stats settings")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a workflow value")
    p.add_argument("--subset", metavar="NAME", help="label for LAION-schema parquet input (e.g. en, multi, nolang)")
    p.add_argument("--json", action="store_true", help="print the table as JSON (one object per subset)")
    p.add_argument("--swap-wh", action="store_true", help="swap WIDTH and HEIGHT (LAION's legacy files have them swapped)")
    p.set_defaults(fn=cmd_stats)

    p = sub.add_parser("demo", help="the whole pipeline on a small world built on 127.0.0.1, ending with the statistics",
                       description="Build a small demo world (an image server on 127.0.0.1 and WAT pages in several languages), "
                                   "run every stage on a LocalCluster with the shipped demo models, print the funnel and statistics.")
    p.add_argument("--out", "-o", metavar="DIR", default="laion_demo", help="run directory (default: ./laion_demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a workflow value")
    p.set_defaults(fn=cmd_demo)

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

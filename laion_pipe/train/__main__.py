"""`python -m laion_pipe.train --out RUN`: the training stage as a command of its own.

The same as `laion-pipe train --out RUN` (the stage table's row runs `stage.run` the same way):
the run's saved workflow unless --workflow, `--set` overrides, exit 0 done, 1 failed, 2 a
configuration or input error before any work.
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m laion_pipe.train", description="Train the workflow's train: model on RUN/dataset/.")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="run directory")
    p.add_argument("--workflow", "-w", metavar="FILE", help="workflow YAML; default: the run directory's saved workflow")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a workflow value")
    p.add_argument("--force", action="store_true", help="start over instead of resuming from the newest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    from ..config import ConfigError
    from ..pipeline import resolve_workflow, save_workflow
    from ..report_cli import console, print_stage_report
    from .preflight import preflight
    from .stage import run

    try:
        wf, out = resolve_workflow(args.workflow, args.out, args.overrides)
        wf.runner.progress = wf.runner.progress and not args.no_progress
        wf.runner.force = args.force
        preflight(wf, out)  # before anything is written: a mistyped directory is never created
        save_workflow(out, wf)
        report = run(out, wf)
    except ConfigError as e:
        console.print(f"[red]error:[/red] {e}")
        return 2
    print_stage_report(report)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""One training process: `python -m laion_pipe.train.worker --out RUN --workflow FILE`.

torchrun starts one per GPU (see `launch.py`); every process runs the same loop. Process 0
also does the stage's bookkeeping around it: the checks and `holdout.json` before (unless the
stage that launched the processes did them: `--prepared`), `loss.png` and the manifest after.
In a batch job, where no `laion-pipe train` runs around the processes, that makes the job's
result the same as a local run's.

`main` is decorated with torch.distributed.elastic's `@record`: an exception in any process is
written to the error file torchrun gives it (TORCHELASTIC_ERROR_FILE), so torchrun's summary,
and the stage's record (`elastic.py`), show that process's traceback as the root cause.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from torch.distributed.elastic.multiprocessing.errors import record


@record
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m laion_pipe.train.worker", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--workflow", required=True, help="workflow YAML (the stage's snapshot, or the job script's)")
    p.add_argument("--prepared", action="store_true", help="the launching stage already checked the run and wrote holdout.json")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    from ..config import ConfigError, load_workflow
    from .loop import train
    from .stage import finish, prepare, write_run_files

    started = time.time()
    rank = int(os.environ.get("RANK", "0"))
    try:
        wf = load_workflow(args.workflow)
        shards, fp = prepare(args.out, wf) if rank == 0 else ({}, "")
        if rank == 0 and not args.prepared:
            write_run_files(args.out, wf)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    train(args.out, wf, progress=not args.no_progress)
    if rank == 0:
        finish(args.out, wf, shards, fp, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())

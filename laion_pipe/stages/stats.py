"""The stats stage: LAION-5B's table and the funnel of a run, written to `stats/`.

In the pipeline it is one runner partition (`_state/stats/all.json`), whose fingerprint covers
every dataset parquet file, every manifest of the earlier stages and the `stats:` settings: a
rerun after nothing changed is skipped, a rerun after `select` changed a threshold is redone.
The partition's task does no row work itself: it submits the Dask aggregations of
`laion_pipe.stats` from inside the worker (`worker_client`) and writes the small results.

`main_stats` is the whole `laion-pipe stats PATH` command, so the CLI is one call.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence

import orjson
from distributed import Client, get_client, get_worker, worker_client
from rich.console import Console

from .. import fsio, runner
from ..config import ConfigError, Workflow
from ..runner import Outcome, Partition, StageReport
from ..schema import STAGE_DIRS, STATE_DIR
from ..stats import StatsInputError, StatsResult, compute
from ..stats.aggregate import DATASET_DIR, is_run_dir
from ..stats.plots import make_plots
from ..stats.render import print_table, to_csv, to_markdown
from ..stats.report import render_html

NAME = "stats"
OUT_DIR = STAGE_DIRS[NAME]
KEY = "all"
FILES = ("table.md", "table.csv", "table.json", "stats.json", "report.html")
"""What `stats/` always holds; plots go to `stats/plots/{name}.png`."""


def write_outputs(result: StatsResult, dest: str, cfg) -> list[str]:
    """Write the table (Markdown, CSV, JSON), the full statistics, the plots and report.html
    under `dest`, each atomically; returns their paths relative to `dest`."""
    plots = make_plots(result) if cfg.plots else {}
    written: list[str] = []

    def put(rel: str, data: bytes) -> None:
        fsio.write_bytes_atomic(fsio.join(dest, rel), data)
        written.append(rel)

    for name, png in plots.items():
        put(f"plots/{name}.png", png)
    put("table.md", to_markdown(result).encode())
    put("table.csv", to_csv(result).encode())
    put("table.json", orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2))
    put("stats.json", orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    put("report.html", render_html(result, plots).encode())  # last: its presence means the rest is there
    return written


def _listing(path: str, *, suffix: str = "", skip_prefix: str | None = None) -> list[str]:
    """Identities (path, size, mtime/ETag) of the files under `path`, from one recursive listing
    (one request per page on an object store, not one per file)."""
    fs, p = fsio.fs_and_path(path)
    if not fs.isdir(p):
        return []
    out = []
    for name, info in sorted(fs.find(p, detail=True).items()):
        rel = name[len(p.rstrip("/")) + 1:]
        base = rel.rpartition("/")[2]
        if base.startswith(fsio.TMP_PREFIX) or not rel.endswith(suffix):
            continue
        if skip_prefix and rel.startswith(skip_prefix):
            continue
        stamp = next((str(info[k]) for k in ("mtime", "ETag", "LastModified", "last_modified", "created")
                      if info.get(k) is not None), "")
        out.append(f"{rel}|{info.get('size')}|{stamp}")
    return out


def plan(out: str, wf: Workflow) -> list[Partition]:
    """One partition over the whole run: the statistics are global sums."""
    dataset = fsio.join(out, DATASET_DIR)
    state = fsio.join(out, STATE_DIR)
    upstream = (runner.stage_ref("select", runner.current(out, "select")),)
    fp = runner.fingerprint(
        _listing(dataset, suffix=".parquet"),
        _listing(state, suffix=".json", skip_prefix=f"{NAME}/"),
        wf.stats.model_dump(mode="json"),
        upstream,
    )
    return [Partition(key=KEY, inputs=(dataset, state), fingerprint=fp, upstream=upstream)]


@contextlib.contextmanager
def _client() -> Iterator[Client]:
    """Inside a Dask task: a client that secedes from the worker's thread pool while the
    aggregations run (no deadlock on a one-thread worker). Outside one: the default client."""
    try:
        get_worker()
        in_task = True
    except ValueError:
        in_task = False
    if not in_task:
        yield get_client()
        return
    with worker_client() as client:
        yield client


def process(part: Partition, out: str, wf: Workflow) -> Outcome:
    with _client() as client:
        result = compute(out, wf.stats, client)
    o = Outcome()
    o.outputs = [f"{OUT_DIR}/{rel}" for rel in write_outputs(result, fsio.join(out, OUT_DIR), wf.stats)]
    for s in result.all_rows():
        o.counts[f"pairs.{s.subset}"] = s.counts.count
    from ..stats.report import finish_report  # gallery.json, then report.html with gallery and train/eval sections

    o.outputs += [f"{OUT_DIR}/{rel}" for rel in finish_report(out, wf)]
    return o


def run(out: str, wf: Workflow, client: Client) -> StageReport:
    return runner.run_stage(NAME, plan(out, wf), process, out, wf, client)


def load_result(out: str) -> StatsResult:
    """The statistics a finished stats stage wrote (what the notebook loads)."""
    return StatsResult.from_dict(fsio.read_json(fsio.join(out, OUT_DIR, "stats.json")))  # type: ignore[arg-type]


@contextlib.contextmanager
def _default_client() -> Iterator[Client]:
    """A small in-process cluster for when the caller has none."""
    from distributed import LocalCluster

    with LocalCluster(processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


def main_stats(
    paths: str | Sequence[str],
    *,
    subset: str | None = None,
    as_json: bool = False,
    swap_wh: bool = False,
    out: str | None = None,
    wf: Workflow | None = None,
    client: Client | None = None,
    console: Console | None = None,
) -> int:
    """`laion-pipe stats PATH... [--subset NAME] [--json] [--swap-wh] [--out DIR]`; returns the exit code.

    - A run directory without `--out`: runs the stats stage (resumable, writes `PATH/stats/`).
    - A run directory with `--out DIR`, or parquet files / folders / globs in LAION's schema:
      computes directly; writes the files into DIR only when `--out` is given.
    - Prints the rich table, or with `--json` only the table as JSON on stdout.
    Exit codes: 0 done, 1 the stage failed, 2 bad input or arguments (message on stderr).
    """
    err = Console(stderr=True)
    console = console or Console()
    wf = wf or Workflow()
    if as_json:  # stdout carries the JSON alone: no progress bar
        wf = wf.model_copy(update={"runner": wf.runner.model_copy(update={"progress": False})})
    path_list = [paths] if isinstance(paths, str) else list(paths)
    if not path_list:
        err.print("stats: no PATH given")
        return 2
    run_dir = path_list[0] if len(path_list) == 1 and is_run_dir(path_list[0]) else None
    if run_dir is not None and subset is not None:
        err.print("stats: --subset labels parquet inputs; a run directory's rows are its own subsets")
        return 2
    if run_dir is not None and swap_wh:
        err.print("stats: --swap-wh is for LAION's legacy parquet files; a run directory's sizes are not swapped")
        return 2
    written_to: str | None = None
    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(_default_client())
        try:
            if run_dir is not None and out is None:
                report = run(run_dir, wf, client)
                if report.failed:
                    err.print(f"stats: failed: {report.failed[0]['error']}")
                    return 1
                result = load_result(run_dir)
                written_to = fsio.join(run_dir, OUT_DIR)
            else:
                result = compute(path_list, wf.stats, client, subset_label=subset, swap_wh=swap_wh)
                if out is not None:
                    write_outputs(result, out, wf.stats)
                    written_to = out
        except (StatsInputError, ConfigError) as e:
            err.print(f"stats: {e}", highlight=False, markup=False)
            return 2
    if as_json:
        sys.stdout.write(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
        sys.stdout.flush()
    else:
        print_table(result, console)
        if written_to is not None:
            console.print(f"wrote {fsio.join(written_to, 'report.html')} (and tables, plots)", highlight=False)
    return 0

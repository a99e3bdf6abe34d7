"""Which parquet files make which table row, and the Dask aggregations over them.

Two kinds of input:
- a run directory: rows `en`, `multi`, `nolang` from `dataset/{subset}/*.parquet` plus their
  total; any other folder of `dataset/` (a recipe such as `laion2B-en`) gets its own row outside
  the total, so no pair is counted twice; the funnel comes from `_state/`.
- parquet files, folders of them, or globs in LAION-5B's published schema (URL, TEXT, WIDTH,
  HEIGHT, similarity, punsafe, pwatermark[, LANGUAGE]): one row, labelled by the caller.

All sources are aggregated in one `client.compute` call, so Dask reads each file once per
aggregation graph and only sums (a few hundred integers per subset) and top-N lists come back.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import dask.dataframe as dd
import pyarrow.parquet as pq

from .. import fsio
from ..schema import SUBSETS
from .funnel import compute_funnel
from .model import TOTAL, Counts, Histogram, StatsResult, SubsetStats
from .partials import COUNT_FIELDS, VALUE_COUNTS_META, Spec, domain_counts, language_counts, partial_counts

DATASET_DIR = "dataset"
REQUIRED_COLUMNS: tuple[str, ...] = ("TEXT", "WIDTH", "HEIGHT")
OPTIONAL_COLUMNS: tuple[str, ...] = ("URL", "similarity", "punsafe", "pwatermark", "LANGUAGE")
LANGUAGE_CAP = 1000
"""Languages kept per subset before the top-N cut: lid.176 knows 176, so the total row's
language counts (sums of the subsets' lists) are exact."""

PARTITIONS_PER_SPLIT = 64
"""Input partitions per output partition of the value counts (see _counted)."""


class StatsInputError(ValueError):
    """The input cannot be read as metadata: no files, or a missing column (message says which)."""


@dataclass(frozen=True)
class Source:
    """The parquet files of one table row. `in_total`: part of the total row (language subsets)."""

    label: str
    paths: tuple[str, ...]
    in_total: bool = True


def is_run_dir(path: str) -> bool:
    """A run directory has the select stage's `dataset/` folder or the runner's `_state/`."""
    fs, p = fsio.fs_and_path(path)
    return fs.isdir(p) and (fs.isdir(f"{p.rstrip('/')}/{DATASET_DIR}") or fs.isdir(f"{p.rstrip('/')}/_state"))


def _parquet_in(folder: str) -> tuple[str, ...]:
    return tuple(fsio.glob(fsio.join(folder, "*.parquet")))


def run_dir_sources(run_dir: str) -> list[Source]:
    """en / multi / nolang (always, empty when absent), then the other recipes of dataset/: the
    parquet files of the select stage's current plan (a file an older plan left is not read).
    A `dataset/` folder without the select stage's state (copied from a run) is read as it lies."""
    from ..shards import current_dataset_parquets

    found = current_dataset_parquets(run_dir)
    if found is not None:
        sources = [Source(s, tuple(found.get(s, ()))) for s in SUBSETS]
        sources += [Source(name, tuple(files), in_total=False) for name, files in sorted(found.items())
                    if name not in SUBSETS and files]  # fmt: skip
        return sources
    root = fsio.join(run_dir, DATASET_DIR)
    sources = [Source(s, _parquet_in(fsio.join(root, s))) for s in SUBSETS]
    fs, p = fsio.fs_and_path(root)
    if fs.isdir(p):
        for entry in sorted(fs.ls(p, detail=True), key=lambda e: e["name"]):
            name = entry["name"].rstrip("/").rpartition("/")[2]
            if entry["type"] == "directory" and name not in SUBSETS and not name.startswith((".", "_")):
                files = _parquet_in(fsio.join(root, name))
                if files:
                    sources.append(Source(name, files, in_total=False))
    return sources


def file_sources(paths: Sequence[str], label: str) -> list[Source]:
    """Parquet files, folders of parquet files, or globs: one source named `label`."""
    files: list[str] = []
    for path in paths:
        if any(ch in path for ch in "*?["):
            found = [f for f in fsio.glob(path) if f.endswith(".parquet")] or fsio.glob(path)
        else:
            fs, p = fsio.fs_and_path(path)
            if fs.isdir(p):
                found = list(_parquet_in(path))
            elif fs.exists(p):
                found = [path]
            else:
                raise StatsInputError(f"{path}: no such file or directory")
        if not found:
            raise StatsInputError(f"{path}: no parquet files")
        files += found
    return [Source(label, tuple(dict.fromkeys(files)))]


def _columns(source: Source) -> list[str]:
    """The columns the statistics read from this source's files (its first file's schema)."""
    fs, p = fsio.fs_and_path(source.paths[0])
    with fs.open(p, "rb") as f:
        names = pq.read_schema(f).names
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise StatsInputError(
            f"{source.paths[0]}: missing column(s) {', '.join(missing)}; the statistics need LAION-5B's "
            f"metadata columns {', '.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)} (the last five optional)"
        )
    return [c for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if c in names]


def _frame(source: Source, swap_wh: bool) -> dd.DataFrame:
    ddf = dd.read_parquet(list(source.paths), columns=_columns(source))
    if swap_wh:  # LAION's legacy metadata files have WIDTH and HEIGHT the wrong way round
        ddf = ddf.rename(columns={"WIDTH": "HEIGHT", "HEIGHT": "WIDTH"})
    return ddf


def _empty(label: str, spec: Spec) -> SubsetStats:
    hists = {name: Histogram(list(edges), [0] * (len(edges) - 1)) for name, edges in spec.edges}
    return SubsetStats(subset=label, counts=Counts(), histograms=hists)


def _from_sums(label: str, sums, spec: Spec, nfiles: int) -> SubsetStats:
    counts = Counts(**{k: int(sums[k]) for k in COUNT_FIELDS})
    hists = {
        name: Histogram(list(edges), [int(sums[f"{name}_{i}"]) for i in range(len(edges) - 1)])
        for name, edges in spec.edges
    }
    return SubsetStats(subset=label, counts=counts, histograms=hists, files=nfiles)


def _counted(parts: dd.DataFrame, n: int) -> dd.Series:
    """Sum per-partition (value, n) counts and keep the n largest. While the data is small the
    sum is a tree reduction; with many partitions (possibly tens of millions of distinct domains,
    too many for one worker) it is spread over several output partitions by a shuffle first."""
    split_out = max(1, parts.npartitions // PARTITIONS_PER_SPLIT)
    return parts.groupby("value")["n"].sum(split_out=split_out).nlargest(n)


def _top(series) -> list[tuple[str, int]]:
    """(value, count) pairs, most frequent first, ties by value (deterministic output)."""
    pairs = [(str(k), int(v)) for k, v in series.items()]
    return sorted(pairs, key=lambda kv: (-kv[1], kv[0]))


def _merge_top(lists: list[list[tuple[str, int]]], n: int) -> list[tuple[str, int]]:
    c: Counter = Counter()
    for lst in lists:
        c.update(dict(lst))
    return sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def compute(
    paths_or_run_dir: str | Sequence[str],
    cfg,
    client,
    subset_label: str | None = None,
    swap_wh: bool = False,
) -> StatsResult:
    """The statistics of a run directory or of LAION-schema parquet files (see module docstring).

    `cfg` is a StatsConfig; `client` a distributed Client that runs every aggregation.
    `subset_label` names the row of parquet inputs (default "all"); `swap_wh` swaps WIDTH and
    HEIGHT as read (LAION's legacy files): the table is symmetric in them, the size histograms not.
    """
    spec = Spec.from_config(cfg)
    paths = [paths_or_run_dir] if isinstance(paths_or_run_dir, str) else list(paths_or_run_dir)
    run_dir = paths[0] if len(paths) == 1 and is_run_dir(paths[0]) else None
    if run_dir is not None:
        sources = run_dir_sources(run_dir)
    else:
        sources = file_sources(paths, subset_label or "all")

    frames = {s.label: _frame(s, swap_wh) for s in sources if s.paths}
    wanted: list = []  # (what, label, dask collection)
    domain_parts: dict[str, dd.DataFrame] = {}
    meta = spec.meta()
    for label, ddf in frames.items():
        numbers = ddf[[c for c in ddf.columns if c not in ("URL", "LANGUAGE")]]
        wanted.append(("sums", label, numbers.map_partitions(partial_counts, spec, meta=meta).sum()))
        if "LANGUAGE" in ddf.columns:
            langs = ddf[["LANGUAGE"]].map_partitions(language_counts, meta=VALUE_COUNTS_META)
            wanted.append(("languages", label, _counted(langs, LANGUAGE_CAP)))
        if "URL" in ddf.columns:
            domain_parts[label] = ddf[["URL"]].map_partitions(domain_counts, meta=VALUE_COUNTS_META)
            wanted.append(("domains", label, _counted(domain_parts[label], cfg.top_n)))
    make_total = run_dir is not None
    totalled = [s.label for s in sources if s.in_total and s.label in domain_parts]
    if make_total and totalled:
        # The same per-partition counts as the subsets' (one graph: computed once), summed together.
        wanted.append(("domains", TOTAL, _counted(dd.concat([domain_parts[t] for t in totalled]), cfg.top_n)))

    results = client.gather(client.compute([w[2] for w in wanted])) if wanted else []
    got: dict[tuple[str, str], object] = {(w[0], w[1]): r for w, r in zip(wanted, results)}

    stats: dict[str, SubsetStats] = {}
    for s in sources:
        if ("sums", s.label) in got:
            st = _from_sums(s.label, got[("sums", s.label)], spec, len(s.paths))
        else:
            st = _empty(s.label, spec)
        st.languages = _top(got[("languages", s.label)]) if ("languages", s.label) in got else []
        st.domains = _top(got[("domains", s.label)]) if ("domains", s.label) in got else []
        stats[s.label] = st

    main = [stats[s.label] for s in sources if s.in_total]
    total = None
    if make_total:
        total = SubsetStats(subset=TOTAL, counts=Counts(), histograms=_empty(TOTAL, spec).histograms)
        for st in main:
            total.counts = total.counts + st.counts
            total.histograms = {k: h + st.histograms[k] for k, h in total.histograms.items()}
            total.files += st.files
        total.languages = _merge_top([st.languages for st in main], cfg.top_n)
        total.domains = _top(got[("domains", TOTAL)]) if ("domains", TOTAL) in got else []
    for st in main + [stats[s.label] for s in sources if not s.in_total]:
        st.languages = st.languages[: cfg.top_n]

    return StatsResult(
        source=str(run_dir if run_dir is not None else ", ".join(paths)),
        subsets=main,
        total=total,
        others=[stats[s.label] for s in sources if not s.in_total],
        funnel=compute_funnel(run_dir, client) if run_dir is not None else [],
        nsfw_threshold=cfg.nsfw_threshold,
        watermark_threshold=cfg.watermark_threshold,
        swap_wh=swap_wh,
    )

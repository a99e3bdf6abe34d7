"""What a workflow would cost, on paper, before it runs: files, pairs, core-hours per stage,
GPU-hours, bytes written, bytes fetched and DNS lookups.

The arithmetic is plain multiplication by the per-unit figures of `unit_costs.json`
(`laion_pipe/costs.py`), each of which says whether it was measured here, published, derived
from published figures or assumed. The unit of work is the *real-size WAT file*: a crawl file
counts as one; a local file counts by its size against a real one (`crawl.bytes_per_wat`), so
that a 10 kB test file does not cost what a 375 MB crawl file does.

Counting the inputs never touches the network: a crawl id counts `extract.max_files` files, or
the files its listing names when `extract.crawl_base_url` is a local mirror, or else the typical
size of a recent crawl (`crawl.wat_files_per_crawl`), and the estimate says which. Everything after
`count_inputs` is a pure function of its arguments.

See docs/scaling.md for the same figures extrapolated to one crawl and to LAION-5B.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .config.dedup import DedupConfig
from .costs import UnitCost, get, load_unit_costs
from .crawl.paths import crawl_files, is_crawl_id

HOUR = 3600.0
ESTIMATED_STAGES: tuple[str, ...] = ("extract", "dedup", "download", "score")

# the cost file's keys this module reads
K_WAT_FILES = "crawl.wat_files_per_crawl"
K_WAT_BYTES = "crawl.bytes_per_wat"
K_EXTRACT = "extract.core_seconds_per_wat"
K_PAIRS = "extract.unique_pairs_per_wat"
K_CAND_BYTES = "extract.output_bytes_per_wat"
K_UNIQUE = "dedup.unique_fraction"
K_DEDUP = "dedup.core_seconds_per_million_candidates"
K_SPILL = "dedup.spill_bytes_per_candidate_byte"
K_SUCCESS = "download.success_fraction"
K_DOWNLOAD = "download.core_seconds_per_thousand_images"
K_WIRE = "download.wire_bytes_per_image"
K_IMG256 = "download.bytes_per_image_256"
K_IMG512 = "download.bytes_per_image_512"
K_DNS = "download.dns_queries_per_image"
K_SCORE_CPU = "score.cpu_core_seconds_per_thousand_images"
K_SCORE_GPU = "score.gpu_images_per_second"
K_FEED = "score.feed_core_seconds_per_thousand_images"
K_FINAL = "select.final_fraction_of_unique"
K_CC2DATASET = "cc2dataset.core_seconds_per_wat"
K_IMG2DATASET = "img2dataset.core_seconds_per_thousand_images"


@dataclass(frozen=True)
class InputCount:
    """A workflow's inputs as work: how many files, and how many real-size WAT files they are."""

    files: int
    wat_equivalents: float
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class StageCost:
    stage: str
    units: float  # how much work: WAT files, candidates, images
    unit: str
    core_hours: float
    gpu_hours: float | None  # only where a GPU can do the work (score)
    rate: UnitCost  # the per-unit figure the core-hours come from
    feed_core_hours: float = 0.0  # with a GPU: the CPU work left around the models (reading, decoding, writing)
    feed_rate: UnitCost | None = None


@dataclass(frozen=True)
class Estimate:
    """The cost of running a workflow's stages over its inputs."""

    name: str
    inputs: InputCount
    candidates: float  # pairs extract writes
    unique: float  # after the global dedup
    downloaded: float  # stored images
    final: float  # pairs in dataset/ (the default language subsets)
    stages: tuple[StageCost, ...]
    candidates_bytes: float
    images_bytes: float
    dataset_bytes: float
    image_bytes_rate: UnitCost  # bytes per stored image used for images/ and dataset/
    wire_bytes: float  # fetched from the web
    dns_queries: float  # upper bound
    dedup_shuffle: DedupShuffle  # what dedup's shuffle writes and reads
    comparisons: tuple[tuple[str, float, UnitCost], ...]  # (what, core-hours, figure)
    used: tuple[UnitCost, ...] = field(default=())  # every figure the numbers depend on

    @property
    def core_hours(self) -> float:
        """Core-hours of all estimated stages with scoring on GPUs (the CPUs still decode for them)."""
        return sum(s.feed_core_hours if s.gpu_hours is not None else s.core_hours for s in self.stages)

    @property
    def core_hours_cpu_only(self) -> float:
        """Core-hours of all estimated stages with scoring on CPUs too."""
        return sum(s.core_hours for s in self.stages)

    def stage(self, name: str) -> StageCost:
        for s in self.stages:
            if s.stage == name:
                return s
        raise KeyError(name)

    def render(self) -> str:
        """Plain lines for a terminal or a batch log."""
        w = self.inputs
        lines = [f"estimate for {self.name}, on paper (per-unit figures: laion_pipe/unit_costs.json)"]
        wat = f"{w.wat_equivalents:,.0f}" if w.wat_equivalents >= 1000 else sig(w.wat_equivalents)
        lines.append(f"inputs: {w.files:,} file{'s' if w.files != 1 else ''} = {wat} real-size WAT file"
                     f"{'s' if w.wat_equivalents != 1 else ''}")
        lines += [f"  {n}" for n in w.notes]
        lines.append(f"pairs: {human(self.candidates)} candidates -> {human(self.unique)} unique -> "
                     f"{human(self.downloaded)} images downloaded -> {human(self.final)} in dataset/")
        header = f"  {'stage':<9} {'work':>22} {'core-hours':>12} {'GPU-hours':>10}  per unit (kind)"
        lines.append(header)
        for s in self.stages:
            gpu = "-" if s.gpu_hours is None else sig(s.gpu_hours)
            core = sig(s.core_hours) + (" CPU" if s.gpu_hours is not None else "")
            lines.append(f"  {s.stage:<9} {human(s.units) + ' ' + s.unit:>22} {core:>12} {gpu:>10}  "
                         f"{sig(s.rate.value)} {s.rate.unit} ({s.rate.kind})")
            if s.feed_rate is not None:
                lines.append(f"  {'':<9} {'CPUs feeding GPUs':>22} {sig(s.feed_core_hours):>12} {'':>10}  "
                             f"{sig(s.feed_rate.value)} core-s per 1,000 images ({s.feed_rate.kind})")
        if self._has_score():
            lines.append(f"  total {sig(self.core_hours)} core-hours with scoring on GPUs "
                         f"({sig(self.core_hours_cpu_only)} with scoring on CPUs)")
        else:
            lines.append(f"  total {sig(self.core_hours)} core-hours")
        lines.append(f"output: candidates/ {nbytes(self.candidates_bytes)}, images/ {nbytes(self.images_bytes)}, "
                     f"dataset/ {nbytes(self.dataset_bytes)} ({nbytes(self.image_bytes_rate.value)} per image: "
                     f"{self.image_bytes_rate.unit}, {self.image_bytes_rate.kind})")
        lines.append(f"network: {nbytes(self.wire_bytes)} fetched, up to {human(self.dns_queries)} DNS lookups")
        if any(s.stage == "dedup" for s in self.stages):
            d = self.dedup_shuffle
            lines.append(f"dedup shuffle: {nbytes(self.candidates_bytes)} written and read once, in "
                         f"{human(d.files)} files ({human(d.tasks)} run files + {human(d.survivor_files)} survivor files) "
                         f"and {human(d.ranged_reads)} ranged reads; {human(d.reduce_tasks)} reduce tasks, each spilling about "
                         f"{nbytes(d.scratch_bytes_per_task)} to local disk (dedup.group_target_bytes, bucket_target_bytes, "
                         "coarse_buckets, flush_rows)")
        if self.comparisons:
            lines.append("published tools on the same work: " + "; ".join(
                f"{what} {sig(h)} core-hours ({sig(c.value)} {c.unit}, {c.kind})" for what, h, c in self.comparisons))
        assumed = [c for c in self.used if c.kind == "assumed"]
        for c in assumed:
            lines.append(f"assumed: {c.key} = {sig(c.value)} ({c.unit}); see docs/scaling.md")
        return "\n".join(lines)

    def _has_score(self) -> bool:
        return any(s.gpu_hours is not None for s in self.stages)


# ----------------------------------------------------------------------------------------------
# Counting inputs (reads local files and listings only)


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _local_files(item: str) -> list[str] | None:
    """The local files an input names (glob, directory or file); None when none exist."""
    from . import fsio

    if set("*?[") & set(item):
        found = fsio.glob(os.path.abspath(item))
        return [f for f in found if os.path.isfile(f)] or None
    if os.path.isdir(item):
        names = sorted(n for n in os.listdir(item) if not n.startswith("."))
        return [os.path.join(item, n) for n in names if os.path.isfile(os.path.join(item, n))] or None
    return [item] if os.path.isfile(item) else None


def _list_rows(path: str) -> int | None:
    """Rows of a local URL list (estimated for text formats), or None when it is no list."""
    from .crawl import urllist

    layout = urllist.describe(path)
    if layout is None:
        return None
    if layout.rows is not None:
        return layout.rows
    import zlib

    with open(path, "rb") as f:
        raw = f.read(1 << 16)
    head, size = raw, layout.size
    if layout.gzip:  # the first 64 kB's compression ratio stands for the file's
        d = zlib.decompressobj(31)
        head = d.decompress(raw, 1 << 22)
        size = layout.size * len(head) / max(1, len(raw) - len(d.unused_data) - len(d.unconsumed_tail))
    lines = head.count(b"\n") or 1
    return max(1, int(size / max(1.0, len(head) / lines)))


def count_inputs(
    inputs: Sequence[str],
    costs: Mapping[str, UnitCost],
    max_files: int | None = None,
    crawl_base_url: str = "https://data.commoncrawl.org",
) -> InputCount:
    """Count a workflow's inputs as files and real-size WAT files, without network access.

    - a crawl id: `max_files` files when given; else, with a local `crawl_base_url`, the files
      its listing names; else the typical crawl size (`crawl.wat_files_per_crawl`), said so;
    - local files, globs and directories: each file by its size against `crawl.bytes_per_wat`;
    - a remote file (s3://, https://): one real-size WAT file; a remote glob is not listed;
    - a local URL list (parquet, CSV, ...): its rows (a parquet file's footer; a text list's
      bytes over its first lines' mean length) as the unique pairs of that many WAT files, so
      the later stages see its volume (its extract, no page parsing, costs less than that).
    """
    typical = get(costs, K_WAT_FILES)
    wat_bytes = get(costs, K_WAT_BYTES).value
    files, wat, notes = 0, 0.0, []
    local_n, local_bytes, remote_n = 0, 0, 0
    for raw in inputs:
        item = raw.strip()
        if not item:
            continue
        if is_crawl_id(item):
            if max_files is not None:
                n, how = max_files, f"the first {max_files:,} files of its wat.paths.gz (extract.max_files; at most that many)"
            elif not _is_remote(crawl_base_url):
                try:
                    n, how = len(crawl_files(item, crawl_base_url)), f"the files its listing under {crawl_base_url} names"
                except Exception as e:  # a broken mirror is the real run's error to report
                    n = int(typical.value)
                    how = f"{n:,} WAT files, the typical size of a recent crawl (its local listing failed: {e})"
            else:
                n = int(typical.value)
                how = (f"{n:,} WAT files, the typical size of a recent crawl ({typical.kind}); its wat.paths.gz is not "
                       f"read in --dry-run (set extract.max_files to count fewer)")
            files += n
            wat += n
            notes.append(f"{item}: {how}")
        elif _is_remote(item):
            if set("*?[") & set(item):
                notes.append(f"{item}: a remote glob, not listed in --dry-run (network): not counted")
            else:
                remote_n += 1
        else:
            found = _local_files(item[len("file://"):] if item.startswith("file://") else item)
            if found is None:
                notes.append(f"{item}: no such local file: not counted")
                continue
            for f in found:
                rows = _list_rows(f)
                if rows is None:
                    local_n += 1
                    local_bytes += os.path.getsize(f)
                else:
                    files += 1
                    wat += rows / get(costs, K_PAIRS).value
                    notes.append(f"{f}: a URL list of about {human(rows)} rows, counted as the unique pairs of "
                                 f"{sig(rows / get(costs, K_PAIRS).value)} WAT files (its extract reads no pages: cheaper than that)")
    if local_n:
        files += local_n
        wat += local_bytes / wat_bytes
        notes.append(f"{local_n:,} local file{'s' if local_n != 1 else ''}, {nbytes(local_bytes)}, counted by size "
                     f"({nbytes(wat_bytes)} per real WAT file, {get(costs, K_WAT_BYTES).kind}; a WARC costs more per byte)")
    if remote_n:
        files += remote_n
        wat += remote_n
        notes.append(f"{remote_n:,} remote file{'s' if remote_n != 1 else ''}, each counted as one real-size WAT file")
    return InputCount(files=files, wat_equivalents=wat, notes=tuple(notes))


def wat_files_for_pairs(final_pairs: float, costs: Mapping[str, UnitCost]) -> float:
    """Real-size WAT files whose pairs, through the whole funnel, leave `final_pairs` in dataset/."""
    return final_pairs / (get(costs, K_PAIRS).value * get(costs, K_FINAL).value)


# ----------------------------------------------------------------------------------------------
# The arithmetic (pure)


def image_bytes_figure(costs: Mapping[str, UnitCost], image_size: int, resize_mode: str) -> UnitCost:
    """Bytes per stored image: the published figure nearest the workflow's size (256 or 512 px);
    with resize_mode `no` images keep their size, so the bytes fetched per image."""
    if resize_mode == "no":
        return get(costs, K_WIRE)
    return get(costs, K_IMG256 if image_size <= 384 else K_IMG512)


def estimate(
    inputs: InputCount,
    costs: Mapping[str, UnitCost],
    *,
    image_size: int = 256,
    resize_mode: str = "keep_ratio",
    stages: Sequence[str] = ESTIMATED_STAGES,
    name: str = "this run",
    dedup: DedupConfig | None = None,
) -> Estimate:
    """The estimate for `inputs` (a number of real-size WAT files) from the per-unit `costs`."""
    c = {k: get(costs, k) for k in (K_EXTRACT, K_PAIRS, K_CAND_BYTES, K_UNIQUE, K_DEDUP, K_SPILL, K_SUCCESS, K_DOWNLOAD,
                                    K_WIRE, K_DNS, K_SCORE_CPU, K_SCORE_GPU, K_FEED, K_FINAL, K_CC2DATASET,
                                    K_IMG2DATASET)}
    if not 0 < c[K_UNIQUE].value <= 1:
        raise ValueError(f"{K_UNIQUE} must be in (0, 1], got {c[K_UNIQUE].value}")
    w = inputs.wat_equivalents
    unique = w * c[K_PAIRS].value
    candidates = unique / c[K_UNIQUE].value
    downloaded = unique * c[K_SUCCESS].value
    final = min(unique * c[K_FINAL].value, downloaded)
    img = image_bytes_figure(costs, image_size, resize_mode)

    rows: list[StageCost] = []
    if "extract" in stages:
        rows.append(StageCost("extract", w, "WAT files", w * c[K_EXTRACT].value / HOUR, None, c[K_EXTRACT]))
    if "dedup" in stages:
        rows.append(StageCost("dedup", candidates, "candidates", candidates / 1e6 * c[K_DEDUP].value / HOUR, None, c[K_DEDUP]))
    if "download" in stages:
        rows.append(StageCost("download", downloaded, "images", downloaded / 1e3 * c[K_DOWNLOAD].value / HOUR, None,
                              c[K_DOWNLOAD]))
    if "score" in stages:
        rows.append(StageCost("score", downloaded, "images", downloaded / 1e3 * c[K_SCORE_CPU].value / HOUR,
                              downloaded / c[K_SCORE_GPU].value / HOUR, c[K_SCORE_CPU],
                              feed_core_hours=downloaded / 1e3 * c[K_FEED].value / HOUR, feed_rate=c[K_FEED]))
    comparisons = []
    if "extract" in stages:
        comparisons.append(("cc2dataset extract", w * c[K_CC2DATASET].value / HOUR, c[K_CC2DATASET]))
    if "download" in stages:
        comparisons.append(("img2dataset download", downloaded / 1e3 * c[K_IMG2DATASET].value / HOUR, c[K_IMG2DATASET]))
    used = tuple(sorted({*c.values(), img}, key=lambda u: u.key))
    return Estimate(
        name=name,
        inputs=inputs,
        candidates=candidates,
        unique=unique,
        downloaded=downloaded,
        final=final,
        stages=tuple(rows),
        candidates_bytes=w * c[K_CAND_BYTES].value,
        images_bytes=downloaded * img.value,
        dataset_bytes=final * img.value,
        image_bytes_rate=img,
        wire_bytes=downloaded * c[K_WIRE].value,
        dns_queries=unique * c[K_DNS].value,
        dedup_shuffle=dedup_shuffle(w * c[K_CAND_BYTES].value, candidates, dedup or DedupConfig(), c[K_SPILL].value),
        comparisons=tuple(comparisons),
        used=used,
    )


@dataclass(frozen=True)
class DedupShuffle:
    """What the dedup stage's shuffle writes and reads (laion_pipe/stages/dedup.py), from its
    partitioning rules: one bucketing task per `group_target_bytes` of candidates, each writing ONE
    run file with one segment per (flush of `flush_rows` rows, coarse bucket); `n_buckets` fine
    buckets (default: one per `bucket_target_bytes`) in at most `coarse_buckets` reduce tasks,
    each reading its segment of every run file and writing one survivor file per subset."""

    tasks: float  # bucketing tasks = run files
    flushes: float  # rounds written, all tasks together
    buckets: float  # fine buckets
    reduce_tasks: float  # coarse buckets
    survivor_files: float
    ranged_reads: float  # an index slice per (run file, reduce task) + a segment per (flush, reduce task)
    scratch_bytes_per_task: float  # local spill of one reduce task (its share of the candidates)

    @property
    def files(self) -> float:
        return self.tasks + self.survivor_files


def dedup_shuffle(candidates_bytes: float, candidates: float, cfg: DedupConfig, spill_factor: float = 1.0,
                  subsets: int = 3) -> DedupShuffle:
    """The shuffle's files and reads for this much input: files grow with the tasks (linearly);
    ranged reads with the flushes times the reduce tasks, so linearly too while `coarse_buckets`
    caps the reduce tasks; the local spill of a reduce task is its share of the input, times
    `spill_factor` (spill bytes per candidate parquet byte, measured by bench_dedup.py)."""
    if candidates_bytes <= 0 or candidates <= 0:
        return DedupShuffle(0, 0, 0, 0, 0, 0, 0)
    tasks = max(1, math.ceil(candidates_bytes / cfg.group_target_bytes))
    buckets = cfg.n_buckets or max(1, math.ceil(candidates_bytes / cfg.bucket_target_bytes))
    coarse = min(buckets, cfg.coarse_buckets)
    flushes = tasks * max(1, math.ceil(candidates / tasks / cfg.flush_rows))
    return DedupShuffle(
        tasks=tasks, flushes=flushes, buckets=buckets, reduce_tasks=coarse, survivor_files=subsets * coarse,
        ranged_reads=coarse * (tasks + flushes), scratch_bytes_per_task=candidates_bytes * spill_factor / coarse,
    )


@dataclass(frozen=True)
class Cluster:
    """What finishes an estimate's work within `hours` if every stage ran the whole time."""

    hours: float
    cores: dict[str, float]  # per stage, scoring on GPUs ("score feed": the CPUs that decode for them)
    gpus: float
    score_cores_without_gpus: float
    disk_bytes: float  # candidates/ + images/ + dataset/ held at once
    network_bits_per_second: float
    dns_queries_per_second: float
    shuffle_bytes: float  # what dedup moves between workers
    shuffle: DedupShuffle

    def render(self) -> str:
        days = self.hours / 24
        lines = [f"to finish in {sig(self.hours)} hours ({sig(days)} days), each stage spread over the whole time:"]
        for stage, n in self.cores.items():
            if stage != "score feed":
                lines.append(f"  {stage:<9} {sig(n):>10} cores")
        if "score feed" in self.cores:
            lines.append(f"  {'score':<9} {sig(self.gpus):>10} GPUs + {sig(self.cores['score feed'])} cores to feed them "
                         f"(or {sig(self.score_cores_without_gpus)} cores without GPUs)")
        lines.append(f"  disk      {nbytes(self.disk_bytes):>10} (candidates/ + images/ + dataset/)")
        lines.append(f"  network   {sig(self.network_bits_per_second / 1e9):>10} Gbit/s in, sustained")
        lines.append(f"  DNS       {human(self.dns_queries_per_second):>10} lookups/s (upper bound)")
        lines.append(f"  shuffle   {nbytes(self.shuffle_bytes):>10} written and read once by dedup, "
                     f"in {human(self.shuffle.files)} files and {human(self.shuffle.ranged_reads)} ranged reads; "
                     f"{human(self.shuffle.reduce_tasks)} reduce tasks spilling "
                     f"{nbytes(self.shuffle.scratch_bytes_per_task)} each to local disk")
        return "\n".join(lines)


def cluster_for(est: Estimate, hours: float) -> Cluster:
    """The resources that do `est` in `hours` (each stage spread over the whole time: the stages
    of different partitions overlap in a pipelined run)."""
    secs = hours * HOUR
    cores = {s.stage: s.core_hours / hours for s in est.stages if s.gpu_hours is None}
    score = [s for s in est.stages if s.gpu_hours is not None]
    if score:
        cores["score feed"] = sum(s.feed_core_hours for s in score) / hours
    return Cluster(
        hours=hours,
        cores=cores,
        gpus=sum(s.gpu_hours for s in score) / hours,
        score_cores_without_gpus=sum(s.core_hours for s in score) / hours,
        disk_bytes=est.candidates_bytes + est.images_bytes + est.dataset_bytes,
        network_bits_per_second=est.wire_bytes * 8 / secs,
        dns_queries_per_second=est.dns_queries / secs,
        shuffle_bytes=est.candidates_bytes,
        shuffle=est.dedup_shuffle,
    )


def dry_run_estimate(wf, stages: Sequence[str] | None = None, costs: Mapping[str, UnitCost] | None = None) -> str:
    """The estimate `laion-pipe run WORKFLOW --dry-run` prints, for `wf`'s inputs and settings."""
    costs = load_unit_costs() if costs is None else costs
    run = [s for s in (stages or ESTIMATED_STAGES) if s in ESTIMATED_STAGES]
    if not wf.inputs:
        return f"estimate for workflow {wf.name!r}: the workflow names no inputs, nothing to estimate"
    counted = count_inputs(wf.inputs, costs, wf.extract.max_files, wf.extract.crawl_base_url)
    est = estimate(counted, costs, image_size=wf.download.image_size, resize_mode=wf.download.resize_mode,
                   stages=run, name=f"workflow {wf.name!r}", dedup=wf.dedup)
    text = est.render()
    skipped = [s for s in (stages or ()) if s not in ESTIMATED_STAGES]
    if skipped:
        text += f"\nnot estimated: {', '.join(skipped)} (no per-unit figure yet)"
    return text


# ----------------------------------------------------------------------------------------------
# Number formatting


def sig(x: float, digits: int = 3) -> str:
    """`x` to `digits` significant figures, without exponent for everyday sizes."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = digits - 1 - math.floor(math.log10(abs(x)))
    return f"{x:,.{decimals}f}" if decimals > 0 else f"{round(x, decimals):,.0f}"


def human(x: float) -> str:
    """Counts: 950, 12.3k, 4.56M, 5.85B."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{sig(x / div)}{suffix}"
    return sig(x)


def nbytes(x: float) -> str:
    """Decimal byte sizes: 29.9 KB, 1.2 PB."""
    for div, suffix in ((1e15, "PB"), (1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if abs(x) >= div:
            return f"{sig(x / div)} {suffix}"
    return f"{sig(x)} B"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m laion_pipe.estimate`: the estimate for a number of WAT files or for a dataset
    size, and optionally the cluster that does it in a given time (docs/scaling.md's numbers)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m laion_pipe.estimate", description=main.__doc__)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--wat-files", type=float, metavar="N", help="real-size WAT files (default: one typical crawl)")
    size.add_argument("--pairs", type=float, metavar="P", help="pairs wanted in dataset/, e.g. 5.85e9 for LAION-5B")
    ap.add_argument("--hours", type=float, metavar="H", help="also print the cluster that finishes in H hours (168: a week)")
    ap.add_argument("--image-size", type=int, default=256, help="download.image_size (default 256)")
    ap.add_argument("--costs", metavar="FILE", help="cost file (default: the package's unit_costs.json)")
    args = ap.parse_args(argv)
    costs = load_unit_costs(args.costs)
    if args.pairs is not None:
        wat, note, name = wat_files_for_pairs(args.pairs, costs), f"the WAT files whose pairs leave {human(args.pairs)} in dataset/", f"{human(args.pairs)} pairs"
    elif args.wat_files is not None:
        wat, note, name = args.wat_files, "as given (--wat-files)", f"{human(args.wat_files)} WAT files"
    else:
        wat = get(costs, K_WAT_FILES).value
        note, name = f"one typical crawl ({get(costs, K_WAT_FILES).kind})", "one crawl"
    est = estimate(InputCount(files=math.ceil(wat), wat_equivalents=wat, notes=(note,)), costs,
                   image_size=args.image_size, name=name)
    print(est.render())
    if args.hours:
        print(cluster_for(est, args.hours).render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

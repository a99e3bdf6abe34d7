"""The training data feed: dataset shards -> batches a diffusion model trains on.

A streaming webdataset pipeline per DataLoader worker: list the sources' shards, shuffle the
shard order from (seed, epoch), give each rank and each of its workers its own slice of the
shards (so every sample is read exactly once per epoch across a multi-GPU job), read the tars
through fsspec, drop samples on their `.json` before any pixel is decoded (caption, held-out
part, score filters), mix several sources by weight, shuffle samples in a buffer, decode at
reduced size (JPEG draft), resize and crop to the training resolution (or to equal-area
aspect-ratio buckets, one bucket per batch), and collate in the worker.

Determinism: every random choice comes from the seed and the epoch: the shard order, the sample
buffer of each (rank, worker), the source mix, and per sample the crop, the flip and the caption
dropout (hashed from seed, epoch, shard and key, so they do not depend on what was read before).
The same (seed, epoch) gives the same batches in the same order; resuming at `start_sample`
replays the stream up to that point (reading, checks and decoding, which decide what a batch
holds; not resizing, collating or tokenizing) and hands out exactly the batches an uninterrupted
run would have handed out after it. Each batch names the logical worker that made it
(`worker`), so the trainer can checkpoint every worker's position (`ResumePlan`): resuming from
it, each worker replays only its own part of the epoch up to its cut, all in parallel. Without
a plan (a checkpoint of an older version), the training process first replays every worker's
part itself to find where the cut falls, which reads the epoch's prefix twice.

Nothing in the data crashes the feed: a sample that cannot be decoded, has no caption or fails
a filter is skipped and counted, and each batch carries the counts since the previous batch of
its worker (`skipped`), so the trainer can log them.
"""
from __future__ import annotations

import hashlib
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import orjson
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from laion_pipe.train.buckets import bucket_sizes, nearest_bucket
from laion_pipe.train.loader_images import IMAGE_EXTS, crop_box, load_reduced, open_image, to_array
from laion_pipe.train.loader_sources import resolve_source, tar_samples

log = logging.getLogger(__name__)

Tokenize = Callable[[list[str]], torch.Tensor]


@dataclass(frozen=True)
class SampleFilter:
    """Load-time bounds on a sample's `.json`, as public training scripts apply them. A bound
    whose key is missing (or null) in the `.json` drops the sample: an unknown score is not a
    passing one. `min_original_side` reads `original_width`/`original_height` (img2dataset's
    keys), falling back to LAION's `WIDTH`/`HEIGHT`."""

    min_similarity: float | None = None
    max_punsafe: float | None = None
    max_pwatermark: float | None = None
    min_aesthetic: float | None = None
    min_original_side: int | None = None


@dataclass(frozen=True)
class LoaderSpec:
    """What to read and how to shape it. `sources`: recipe names of `run_dir/dataset/{name}`,
    directories, shard globs, brace patterns, fsspec URLs (s3://, https://). Without `weights`
    the sources' shards form one pool (every sample once per epoch); with weights, each sample
    comes from a source drawn by weight and the epoch ends when the first source runs out, so the
    mix follows the weights throughout. `shuffle_buffer=0` turns shuffling off (shards in name
    order, samples in tar order), as evaluation wants."""

    sources: tuple[str, ...]
    weights: tuple[float, ...] | None = None
    run_dir: str | None = None
    resolution: int = 64
    center_crop: bool = True
    random_flip: bool = False
    filters: SampleFilter = field(default_factory=SampleFilter)
    aspect_buckets: int = 0
    caption_dropout: float = 0.1
    batch_size: int = 32
    seed: int = 0
    shuffle_buffer: int = 1000
    holdout_fraction: float = 0.0
    holdout: Literal["exclude", "only", "all"] = "exclude"
    num_workers: int = 2
    exclude: frozenset[str] = frozenset()
    """Samples never read, as "shard\x1fkey" (decontamination: copies of evaluation images)."""

    def __post_init__(self) -> None:
        if isinstance(self.sources, str):
            object.__setattr__(self, "sources", (self.sources,))
        object.__setattr__(self, "sources", tuple(self.sources))
        if self.weights is not None:
            object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        problems = []
        if not self.sources:
            problems.append("sources: at least one source is needed")
        if self.weights is not None and len(self.weights) != len(self.sources):
            problems.append(f"weights: {len(self.weights)} weights for {len(self.sources)} sources")
        if self.weights is not None and not all(w > 0 and math.isfinite(w) for w in self.weights):
            problems.append(f"weights: each must be a positive number, got {self.weights}")
        if self.resolution < 8:
            problems.append(f"resolution: {self.resolution} is under 8")
        if self.aspect_buckets < 0:
            problems.append(f"aspect_buckets: {self.aspect_buckets} is negative (0 turns buckets off)")
        if not 0.0 <= self.caption_dropout <= 1.0:
            problems.append(f"caption_dropout: {self.caption_dropout} is not a probability")
        if self.batch_size < 1:
            problems.append(f"batch_size: {self.batch_size} is under 1")
        if self.shuffle_buffer < 0:
            problems.append(f"shuffle_buffer: {self.shuffle_buffer} is negative")
        if not 0.0 <= self.holdout_fraction < 1.0:
            problems.append(f"holdout_fraction: {self.holdout_fraction} is not in [0, 1)")
        if self.holdout not in ("exclude", "only", "all"):
            problems.append(f"holdout: {self.holdout!r} is not one of exclude, only, all")
        if self.num_workers < 0:
            problems.append(f"num_workers: {self.num_workers} is negative")
        if problems:
            raise ValueError("LoaderSpec: " + "; ".join(problems))

    def targets(self) -> list[tuple[int, int]]:
        """(height, width) of each bucket; one square when buckets are off."""
        if self.aspect_buckets:
            return bucket_sizes(self.resolution, self.aspect_buckets)
        return [(self.resolution, self.resolution)]


def is_holdout(key: str, fraction: float) -> bool:
    """Whether `key` is in the held-out part: a hash of the key alone (no seed, no order), so
    training and evaluation agree on it in any process, on any run over the same shards."""
    if fraction <= 0.0:
        return False
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8, person=b"holdout").digest(), "big")
    return h / 2.0**64 < fraction


def _seed(*parts: object) -> int:
    """A 64-bit seed from any parts; stable across processes and Python runs (no hash())."""
    return int.from_bytes(hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def _uniforms(seed: int, epoch: int, url: str, key: str) -> tuple[float, float, float, float]:
    """Four uniforms in [0, 1) for one sample's caption dropout, flip, crop top and crop left."""
    d = hashlib.blake2b(f"{seed}\x1f{epoch}\x1f{url}\x1f{key}".encode(), digest_size=16).digest()
    return tuple(int.from_bytes(d[i: i + 4], "big") / 2.0**32 for i in range(0, 16, 4))  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Per-sample checks on the .txt/.json, before any pixel is decoded.

_FILTER_KEYS = {  # filter field -> (json key, keep when value ... bound)
    "min_similarity": ("similarity", "ge"),
    "max_punsafe": ("punsafe", "le"),
    "max_pwatermark": ("pwatermark", "le"),
    "min_aesthetic": ("aesthetic", "ge"),
}


def _number(meta: dict, *keys: str) -> float | None:
    for k in keys:
        v = meta.get(k)
        if v is None or isinstance(v, bool):
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            return f
    return None


def filter_reason(meta: dict, filters: SampleFilter) -> str | None:
    """The name of the first filter `meta` fails (the SampleFilter field), or None."""
    for name, (key, op) in _FILTER_KEYS.items():
        bound = getattr(filters, name)
        if bound is None:
            continue
        v = _number(meta, key)
        if v is None or (v < bound if op == "ge" else v > bound):
            return name
    if filters.min_original_side is not None:
        w = _number(meta, "original_width", "WIDTH")
        h = _number(meta, "original_height", "HEIGHT")
        if w is None or h is None or min(w, h) < filters.min_original_side:
            return "min_original_side"
    return None


def caption_of(sample: dict, meta: dict) -> str:
    """The sample's caption: its `.txt`, else the `.json`'s `caption` (img2dataset) or `TEXT`
    (LAION); empty when none has text."""
    txt = sample.get("txt")
    if isinstance(txt, bytes):
        txt = txt.decode("utf-8", errors="replace")
    if txt and txt.strip():
        return txt.strip()
    for k in ("caption", "TEXT"):
        v = meta.get(k)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return ""


@dataclass
class _Item:
    """A sample that passed the checks, on its way to a batch."""

    key: str
    url: str
    caption: str
    data: bytes | None
    original: tuple[int, int] | None  # (height, width) from the .json, when it says
    image: object = None  # the decoded PIL image, once decoded
    stored: tuple[int, int] = (0, 0)  # (width, height) as stored in the shard
    bucket: int = 0


def _checked(samples: Iterable[dict], spec: LoaderSpec, counts: Counter) -> Iterator[_Item]:
    """Samples that pass the cheap checks, in order; the others counted by reason."""
    holdout_on = spec.holdout == "only" or (spec.holdout == "exclude" and spec.holdout_fraction > 0)
    for s in samples:
        key = s.get("__key__", "")
        if holdout_on and is_holdout(key, spec.holdout_fraction) != (spec.holdout == "only"):
            counts["holdout" if spec.holdout == "exclude" else "not_holdout"] += 1
            continue
        if spec.exclude and f"{s.get('__url__', '')}\x1f{key}" in spec.exclude:
            counts["decontaminated"] += 1
            continue
        meta: dict = {}
        if "json" in s:
            try:
                meta = orjson.loads(s["json"])
                if not isinstance(meta, dict):
                    raise ValueError("not an object")
            except Exception:  # noqa: BLE001 - a broken .json is a counted skip
                counts["bad_json"] += 1
                continue
        caption = caption_of(s, meta)
        if not caption:
            counts["no_caption"] += 1
            continue
        reason = filter_reason(meta, spec.filters)
        if reason is not None:
            counts[reason] += 1
            continue
        data = next((s[e] for e in IMAGE_EXTS if e in s), None)
        oh, ow = _number(meta, "original_height", "HEIGHT"), _number(meta, "original_width", "WIDTH")
        original = (int(oh), int(ow)) if oh and ow else None
        yield _Item(key, s.get("__url__", ""), caption, data, original)


def _weighted_mix(streams: list[Iterator], weights: tuple[float, ...], rng: random.Random) -> Iterator:
    """Draw each sample from a source chosen by weight, until the first source runs out.
    webdataset's RandomMix does this with the global `random` module, whose state depends on
    whatever else used it; the seeded `rng` keeps the mix a function of (seed, epoch, worker)."""
    idx = list(range(len(streams)))
    while True:
        i = rng.choices(idx, weights)[0]
        try:
            yield next(streams[i])
        except StopIteration:
            return


def _decoded(items: Iterable[_Item], targets: list[tuple[int, int]], counts: Counter) -> Iterator[_Item]:
    """Items with their pixels decoded at reduced size and their bucket chosen; undecodable
    ones counted."""
    for it in items:
        if it.data is None:
            counts["no_image"] += 1
            continue
        try:
            im = open_image(it.data)
            b = nearest_bucket(im.width, im.height, targets) if len(targets) > 1 else 0
            it.stored = im.size
            it.image = load_reduced(im, *targets[b])
        except Exception:  # noqa: BLE001 - truncated, corrupt or not an image at all
            counts["decode_error"] += 1
            continue
        it.bucket, it.data = b, None
        yield it


def _grouped(items: Iterable[_Item], n_buckets: int, batch_size: int, counts: Counter) -> Iterator[tuple[list[_Item], dict]]:
    """Batches of items from one bucket each, with the skip counts since the previous batch.
    A batch is handed out only when the next one is complete (or the stream ends), so skips
    seen after the last full batch still reach the caller; partial buckets come last."""
    pending: list[list[_Item]] = [[] for _ in range(n_buckets)]
    ready: list[_Item] | None = None
    for it in items:
        pending[it.bucket].append(it)
        if len(pending[it.bucket]) == batch_size:
            if ready is not None:
                yield ready, _take(counts)
            ready, pending[it.bucket] = pending[it.bucket], []
    for rest in pending:
        if rest:
            if ready is not None:
                yield ready, _take(counts)
            ready = rest
    if ready is not None:
        yield ready, _take(counts)


def _take(counts: Counter) -> dict:
    out = dict(counts)
    counts.clear()
    return out


def collate(items: list[_Item], target: tuple[int, int], spec: LoaderSpec, epoch: int, tokenize: Tokenize | None,
            skipped: dict) -> dict:
    """One batch at `target` (height, width): crops, flips and caption dropout drawn per sample
    from (seed, epoch, shard, key)."""
    th, tw = target
    arrays, captions, sizes, crops = [], [], [], []
    for it in items:
        u_drop, u_flip, u_top, u_left = _uniforms(spec.seed, epoch, it.url, it.key)
        flip = spec.random_flip and u_flip < 0.5
        box = crop_box(it.stored, th, tw, spec.center_crop, u_top, u_left, flip)
        arrays.append(to_array(it.image, box, th, tw, flip))  # type: ignore[arg-type]
        captions.append("" if u_drop < spec.caption_dropout else it.caption)
        sizes.append(it.original or (it.stored[1], it.stored[0]))
        crops.append(box[2:])
    pixels = torch.empty((len(items), 3, th, tw), dtype=torch.float32)
    pixels.copy_(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))  # layout and dtype in one pass
    batch = {
        "pixel_values": pixels.mul_(1 / 127.5).sub_(1.0),
        "caption": captions,
        "key": [it.key for it in items],
        "original_size": torch.tensor(sizes, dtype=torch.long),
        "crop_coords": torch.tensor(crops, dtype=torch.long),
        "skipped": skipped,
    }
    if tokenize is not None:
        batch["input_ids"] = tokenize(captions)
    return batch


@dataclass(frozen=True)
class ResumePlan:
    """Where each logical worker of a rank stands after `start_sample` samples of an epoch.

    The DataLoader hands out its workers' batches in turn, skipping a worker once it is exhausted
    (torch's `_MultiProcessingDataLoaderIter` drops the turns of a worker that returned its end),
    so the epoch's batches come in the order of (k, w): every worker's k-th batch, workers in
    index order, then every worker's (k+1)-th. After a restart physical worker p plays logical
    worker (p + first) % W, where `first` is the worker whose batch was next: that continues the
    same order, exhausted workers included. `skip[w]` is how many batches logical worker w already
    handed out; `partial` the samples of the next batch already taken (a cut inside a batch)."""

    first: int
    skip: tuple[int, ...]
    partial: int = 0


def resume_plan(start_sample: int, sizes: list[Iterable[int]]) -> ResumePlan:
    """The plan after `start_sample` samples, from each logical worker's batch sizes in order
    (lazy iterables: only the batches up to the cut are drawn). Batches are not all full: an
    epoch's last batch of each worker and the last batch of each aspect bucket are partial, and a
    worker runs out before the others when its shards hold fewer samples."""
    workers = len(sizes)
    streams = [iter(s) for s in sizes]
    skip = [0] * workers
    live = [True] * workers
    taken = 0
    while taken < start_sample and any(live):
        for w in range(workers):
            if not live[w]:
                continue
            n = next(streams[w], None)
            if n is None:
                live[w] = False
                continue
            if taken + n > start_sample:  # the cut falls inside this batch
                return ResumePlan(w, tuple(skip), start_sample - taken)
            taken += n
            skip[w] += 1
            if taken == start_sample:
                return ResumePlan((w + 1) % workers, tuple(skip))
    return ResumePlan(0, tuple(skip))


def worker_plan(plan: ResumePlan, worker: int) -> tuple[int, int, int]:
    """(logical worker, batches to skip, samples to skip in the next batch) of physical `worker`."""
    logical = (worker + plan.first) % len(plan.skip)
    return logical, plan.skip[logical], (plan.partial if logical == plan.first else 0)


@dataclass
class Position:
    """Where a rank stands in an epoch, batch by batch: how many batches each logical worker
    handed out and whose turn is next (the worker after the last one, in the DataLoader's round
    robin; an exhausted worker's turn is skipped there as before the restart). `plan()` is the
    ResumePlan of this position, exact without replaying anything."""

    batches: list[int]
    next_worker: int = 0

    @staticmethod
    def start(workers: int) -> Position:
        return Position([0] * max(workers, 1))

    def take(self, batch: dict) -> None:
        w = int(batch.get("worker", 0))
        self.batches[w] += 1
        self.next_worker = (w + 1) % len(self.batches)

    def plan(self) -> ResumePlan:
        return ResumePlan(self.next_worker, tuple(self.batches))


class LoaderStream(IterableDataset):
    """The per-worker pipeline of one (rank, epoch): an IterableDataset of batch dicts. Each
    iteration builds its webdataset pipeline for the worker it runs in."""

    def __init__(self, spec: LoaderSpec, pools: list[list[str]], *, tokenize: Tokenize | None, rank: int,
                 world_size: int, epoch: int, start_sample: int, plan: ResumePlan | None = None) -> None:
        self.spec, self.pools, self.tokenize = spec, pools, tokenize
        self.rank, self.world_size, self.epoch, self.start_sample = rank, world_size, epoch, start_sample
        self.plan: ResumePlan | None = None
        workers = max(spec.num_workers, 1)
        if workers > 1 and plan is not None and len(plan.skip) == workers:
            self.plan = plan  # every worker's position, as the trainer recorded it: no replay here
        elif start_sample and workers > 1:
            # Where the cut falls depends on every worker's batch sizes: replay them here once
            # (reading, checks, decoding; nothing is collated), then each worker replays its own.
            self.plan = resume_plan(start_sample, [self._sizes(w, workers) for w in range(workers)])

    def _on_shard_error(self, counts: Counter) -> Callable[[Exception], bool]:
        def handler(exn: Exception) -> bool:
            log.warning("skipping the rest of a shard: %s", exn)
            counts["shard_error"] += 1
            return True

        return handler

    def _shards(self, pool: int, logical: int, workers: int) -> list[str]:
        shards = list(self.pools[pool])
        if self.spec.shuffle_buffer:
            random.Random(_seed(self.spec.seed, self.epoch, "shards", pool)).shuffle(shards)
        # split_by_node, then split_by_worker, with this job's rank rather than the environment's.
        return shards[self.rank:: self.world_size][logical::workers]

    def _sizes(self, logical: int, workers: int) -> Iterator[int]:
        """The sizes of logical worker `logical`'s batches, in order (lazily)."""
        for group, _ in self._groups(logical, workers, Counter()):
            yield len(group)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            import cv2

            cv2.setNumThreads(1)  # the DataLoader's workers are the parallelism
        spec = self.spec
        single = workers == 1  # one stream: the cut is where its batch sizes reach start_sample
        left = self.start_sample
        if not single:
            plan = self.plan or resume_plan(0, [[] for _ in range(workers)])
            logical, skip_batches, skip_samples = worker_plan(plan, worker)
        else:
            logical, skip_batches, skip_samples = 0, 0, 0
        counts: Counter = Counter()
        targets = spec.targets()
        carried: Counter = Counter()
        for i, (group, skipped) in enumerate(self._groups(logical, workers, counts)):
            if single and left:
                if left >= len(group):
                    left -= len(group)
                    continue  # already consumed before the restart: decoded, never collated
                group, left = group[left:], 0
            elif i < skip_batches:
                continue
            elif i == skip_batches and skip_samples:
                group = group[skip_samples:]
                if not group:
                    carried.update(skipped)
                    continue
            if carried:
                skipped = dict(carried + Counter(skipped))
                carried.clear()
            batch = collate(group, targets[group[0].bucket], spec, self.epoch, self.tokenize, skipped)
            batch["worker"] = logical  # whose batch: the trainer's record of every worker's position
            yield batch

    def _groups(self, logical: int, workers: int, counts: Counter) -> Iterator[tuple[list[_Item], dict]]:
        """The batches (items, skip counts) logical worker `logical` of `workers` makes, uncollated."""
        spec = self.spec
        on_error = self._on_shard_error(counts)
        streams = [
            iter(wds.DataPipeline(
                wds.SimpleShardList(self._shards(i, logical, workers)),
                lambda src: tar_samples((s["url"] for s in src), on_error),
                lambda src: _checked(src, spec, counts),
            ))
            for i in range(len(self.pools))
        ]
        where = (spec.seed, self.epoch, self.rank, logical)
        items: Iterator[_Item] = (streams[0] if len(streams) == 1
                                  else _weighted_mix(streams, spec.weights or (), random.Random(_seed(*where, "mix"))))
        if spec.shuffle_buffer:
            items = wds.shuffle(spec.shuffle_buffer, spec.shuffle_buffer, rng=random.Random(_seed(*where, "samples")))(items)
        targets = spec.targets()
        yield from _grouped(_decoded(items, targets, counts), len(targets), spec.batch_size, counts)


def source_pools(spec: LoaderSpec) -> list[list[str]]:
    """The shard lists the pipeline draws from: one per source when mixing by weight, else one
    pool of every source's shards."""
    per_source = [resolve_source(s, spec.run_dir) for s in spec.sources]
    if spec.weights is None:
        return [sorted({s for shards in per_source for s in shards})]
    return per_source


def make_pipeline(spec: LoaderSpec, *, tokenize: Tokenize | None = None, rank: int = 0, world_size: int = 1,
                  epoch: int = 0, start_sample: int = 0, plan: ResumePlan | None = None) -> LoaderStream:
    """The streaming pipeline of this rank and epoch (an IterableDataset of batches), checked:
    sources exist and hold enough shards for world_size x num_workers readers."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if start_sample < 0:
        raise ValueError(f"start_sample {start_sample} is negative")
    pools = source_pools(spec)
    workers = max(spec.num_workers, 1)
    needed = world_size * workers
    for i, pool in enumerate(pools):
        if len(pool) < needed:
            what = f"source {spec.sources[i]!r}" if spec.weights is not None else (
                f"source {spec.sources[0]!r}" if len(spec.sources) == 1 else f"sources {list(spec.sources)}")
            raise ValueError(
                f"{what} has {len(pool)} shard(s), fewer than world_size {world_size} x num_workers {workers} = "
                f"{needed}: each rank's each DataLoader worker reads whole shards, so some would get no data. "
                f"Use fewer workers or write more, smaller shards.")
    return LoaderStream(spec, pools, tokenize=tokenize, rank=rank, world_size=world_size, epoch=epoch,
                        start_sample=start_sample, plan=plan)


def make_loader(spec: LoaderSpec, *, tokenize: Tokenize | None = None, rank: int = 0, world_size: int = 1,
                epoch: int = 0, start_sample: int = 0, plan: ResumePlan | None = None) -> wds.WebLoader:
    """A DataLoader (webdataset's WebLoader) of batch dicts for this rank and epoch:
    `pixel_values` float32 [B, 3, H, W] in [-1, 1] (H = W = resolution without buckets),
    `input_ids` (when `tokenize` is given), `caption` (after dropout), `key`, `original_size`
    and `crop_coords` LongTensor [B, 2] as (height, width) and (top, left), `skipped`
    (reason -> samples skipped since the worker's previous batch) and `worker` (the logical
    worker that made the batch: `Position` turns these into a `ResumePlan`).

    `start_sample`: samples this rank already took from the loader in this epoch (the sum of
    the batch sizes it handed out), with the same spec, rank and world_size; the loader
    continues with exactly the batches that came next. `plan` (with num_workers > 1): where
    each worker stood then (`Position.plan()`), which spares the training process replaying
    every worker's part of the epoch to find it.
    Ranks' streams differ in length: a DDP loop must end the epoch when any rank runs out.
    Each rank reads its own shards, so the loader must not go through `accelerate`'s
    `prepare` (which would dispatch rank 0's batches to every rank): move batches to the
    device directly."""
    return loader_of(make_pipeline(spec, tokenize=tokenize, rank=rank, world_size=world_size, epoch=epoch,
                                   start_sample=start_sample, plan=plan))


def loader_of(stream: LoaderStream) -> wds.WebLoader:
    """The DataLoader of a pipeline (`make_loader` without building it: the caller keeps the
    stream, and with it the resume plan it settled on)."""
    spec = stream.spec
    extra = {"prefetch_factor": 2} if spec.num_workers else {}
    return wds.WebLoader(stream, batch_size=None, num_workers=spec.num_workers, persistent_workers=False, **extra)

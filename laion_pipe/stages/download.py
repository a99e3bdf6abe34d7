"""Download stage: `unique/{subset}/part-NNNNN.parquet` -> `images/{subset}/NNNNN.tar` +
`NNNNN.parquet` + `NNNNN_stats.json`, in img2dataset's output format.

One Dask task per part (= one shard). Inside it, one asyncio loop keeps `download.threads`
requests in flight (net/fetch.py: keep-alive, per-host limit, DNS cache, timeouts, retries,
address guard, opt-outs, size cap) and a small thread pool (`download.decode_threads`)
decodes, checks, resizes and encodes the images (images.py; the codecs release the GIL), so
network waits and CPU work overlap. Images are streamed into the tar as they finish; only the per-sample metadata is
kept in memory.

The format, so tools made for img2dataset output read ours:
- tar members `{key}.jpg` (or .png/.webp), `{key}.txt` (the alt text), `{key}.json` (the
  sample's metadata row), for successful samples only;
- the parquet has one row per input row, img2dataset's columns (`key, status, error_message,
  width, height, original_width, original_height, sha256`, plus `url` and `caption`) and ours
  (`uid, text, page_url, language, language_score, subset, license`, `reason`: the drop
  reason of a failed sample, and `phash` and `colour_grid`: the stored image's perceptual hash
  and quadrant colours, which select's near-duplicate removal reads; the `.json` member leaves
  the grid's bytes out); `status` is img2dataset's `success`, `failed_to_download` or
  `failed_to_resize`;
- a URL list's own columns (img2dataset's `save_additional_columns`) follow ours in the parquet
  and in each `.json`, under their own names with the types the run's lists gave them
  (`extra_columns.py`; the same columns in every shard of a run);
- `_stats.json` has img2dataset's fields (`count, successes, failed_to_download,
  failed_to_resize, duration, start_time, end_time, status_dict`) plus `reasons`.
Keys are `{shard:05d}{index:04d}` (index = row number in the part; more digits if a part has
over 10,000 rows), as img2dataset builds them: stable across reruns, unique within a subset.

Resume: a done shard is skipped. `run(..., retry_failed=True)` refetches, in done shards, only
the samples that failed for a transient reason (timeouts, connection errors, truncated bodies,
5xx, 429), and rewrites the shard with the new successes merged in; nothing else is downloaded
again. Such a merged shard stays "done" for later plain runs (its stats record the input
fingerprint it came from). With `runner.force` (`--force`) every shard is downloaded again from
scratch, `retry_failed` or not.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import hashlib
import io
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .. import extra_columns, fsio, runner, shards
from ..images import ImageResult, ImageSpec, process_image
from ..net.fetch import TRANSIENT_REASONS, FetchResult, Fetcher
from ..runner import Outcome, Partition, StageReport
from ..schema import CANDIDATE_SCHEMA, IMAGES_SCHEMA, SOURCE

NAME = "download"

SUCCESS, FAILED_TO_DOWNLOAD, FAILED_TO_RESIZE = "success", "failed_to_download", "failed_to_resize"
STATUS_DICT_MAX = 1000
"""Distinct error messages kept in `status_dict` (img2dataset caps its counter too)."""

_TAR_USER = "bigdata"  # webdataset's TarWriter defaults, so our tars look like img2dataset's


def image_spec(cfg) -> ImageSpec:
    """The image settings of a `download:` config section."""
    return ImageSpec(
        image_size=cfg.image_size,
        resize_mode=cfg.resize_mode,
        resize_only_if_bigger=cfg.resize_only_if_bigger,
        encode_format=cfg.encode_format,
        encode_quality=cfg.encode_quality,
        min_bytes=cfg.min_bytes,
        allowed_formats=frozenset(cfg.allowed_formats),
        max_pixels=cfg.max_pixels,
        min_width=cfg.min_width,
        min_height=cfg.min_height,
        max_width=cfg.max_width,
        max_height=cfg.max_height,
        max_aspect_ratio=cfg.max_aspect_ratio,
        draft=cfg.draft,
    )


def output_settings(cfg) -> dict[str, Any]:
    """The settings whose change makes a done shard stale: what an image becomes and which
    responses are acceptable. Concurrency, timeouts and retries are left out on purpose:
    changing them must not redownload finished shards."""
    keep = (
        "image_size", "resize_mode", "resize_only_if_bigger", "encode_format", "encode_quality", "draft",
        "min_bytes", "allowed_formats", "max_pixels", "min_width", "min_height", "max_width", "max_height",
        "max_aspect_ratio", "max_bytes", "allow_cidrs", "opt_out_tokens", "user_agent_token",
    )
    return {k: getattr(cfg, k) for k in keep}


@functools.cache
def relax_malloc_trimming() -> bool:
    """Let glibc keep image-sized buffers in the heap in this process.

    Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536. Setting any malloc threshold
    also freezes glibc's mmap threshold at 128 kB, so every body, decoded image and encoded
    image (100 kB - 1 MB) is mmap'd, page-faulted in and unmapped again: measured here as
    +1.7 ms of system time per image (+35% CPU). Raising both thresholds for the worker process
    (the memory it may keep unreturned is then a few tens of MB) removes that cost.
    Returns whether the tuning applied (glibc only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 16 << 20)) and bool(libc.mallopt(m_trim_threshold, 64 << 20))
    except (OSError, AttributeError):  # not glibc (musl, ...): leave malloc alone
        return False


def sample_key(shard: int, index: int, digits: int) -> str:
    """img2dataset's key: shard number then the row's index in the shard, zero-padded."""
    return f"{shard:05d}{index:0{digits}d}"


def key_digits(n_rows: int) -> int:
    return max(4, len(str(max(n_rows - 1, 0))))


def shard_paths(subset: str, shard: int) -> dict[str, str]:
    return shards.image_shard(subset, shards.shard_name(shard))


# ---------------------------------------------------------------- one sample


@dataclass
class Sample:
    """One row to fetch: its key and its input columns."""

    index: int
    key: str
    row: dict[str, Any]


def _status_for(reason: str) -> str:
    """img2dataset's status for a drop reason: network side or image side."""
    image_side = {
        "image_too_small_bytes", "not_an_image", "decode_error", "format_not_allowed", "decompression_bomb",
        "image_too_small", "image_too_large", "bad_aspect_ratio",
    }
    return FAILED_TO_RESIZE if reason in image_side else FAILED_TO_DOWNLOAD


_IMAGE_COLUMNS = frozenset(IMAGES_SCHEMA.names)


def _carried(row: dict) -> dict:
    """A row's URL-list columns: decoded from a unique part's `source`, or, for a row read back
    from a shard's parquet (`--retry-failed`), its columns beyond ours."""
    if SOURCE in row:
        return extra_columns.decode(row[SOURCE])
    return {k: v for k, v in row.items() if k not in _IMAGE_COLUMNS}


def _meta(sample: Sample, status: str, reason: str | None, error: str | None, img: ImageResult | None, sha256: str | None) -> dict:
    r = sample.row
    return {
        "uid": r.get("uid"),
        "url": r.get("url"),
        "text": r.get("text"),
        "caption": r.get("text"),
        "page_url": r.get("page_url"),
        "language": r.get("language"),
        "language_score": r.get("language_score"),
        "subset": r.get("subset"),
        "license": r.get("license"),
        "key": sample.key,
        "status": status,
        "error_message": error,
        "width": img.width if img else None,
        "height": img.height if img else None,
        "original_width": img.original_width if img else None,
        "original_height": img.original_height if img else None,
        "sha256": sha256,
        "reason": reason,
        "phash": img.phash if img else None,
        "colour_grid": img.colour_grid if img else None,
        **_carried(r),
    }


def _decode(body: bytes, spec: ImageSpec) -> tuple[ImageResult, str]:
    """Hash the original bytes (as img2dataset does) and make the image (in a decode thread,
    unless `decode_threads` is 0)."""
    return process_image(body, spec), hashlib.sha256(body).hexdigest()


Sink = Callable[[Sample, dict, bytes | None], None]


async def _fetch_all(samples: Iterable[Sample], cfg, spec: ImageSpec, sink: Sink) -> None:
    """Fetch and process samples with `cfg.threads` in flight; `sink(sample, meta, image)` is
    called on the loop thread as each one finishes (image is None for a failed sample)."""
    loop = asyncio.get_running_loop()
    it = iter(samples)
    with contextlib.ExitStack() as stack:
        if cfg.decode_threads:
            pool = stack.enter_context(ThreadPoolExecutor(cfg.decode_threads, thread_name_prefix="decode"))

            async def decode(body: bytes) -> tuple[ImageResult, str]:
                return await loop.run_in_executor(pool, _decode, body, spec)

        else:  # on this thread: the loop waits while an image is decoded

            async def decode(body: bytes) -> tuple[ImageResult, str]:
                return _decode(body, spec)

        async with Fetcher(cfg) as fetcher:

            async def worker() -> None:
                for sample in it:  # one shared iterator: each sample is taken by one worker
                    url = sample.row.get("url")
                    if not isinstance(url, str) or not url.strip():
                        sink(sample, _meta(sample, FAILED_TO_DOWNLOAD, "bad_url", "empty url", None, None), None)
                        continue
                    res: FetchResult = await fetcher.fetch(url)
                    if not res.ok:
                        sink(sample, _meta(sample, FAILED_TO_DOWNLOAD, res.reason, res.error, None, None), None)
                        continue
                    img, sha = await decode(res.body)
                    del res
                    if not img.ok:
                        sink(sample, _meta(sample, _status_for(img.reason), img.reason, img.error, img, sha), None)
                    else:
                        sink(sample, _meta(sample, SUCCESS, None, None, img, sha), img.data)

            await asyncio.gather(*(worker() for _ in range(cfg.threads)))


def download_samples(samples: list[Sample], cfg, sink: Sink) -> None:
    """Fetch `samples` (blocking; runs its own event loop in the calling thread)."""
    if samples:
        asyncio.run(_fetch_all(samples, cfg, image_spec(cfg), sink))


# ---------------------------------------------------------------- tar and metadata


def add_sample(tar: tarfile.TarFile, key: str, members: dict[str, bytes], mtime: float) -> None:
    """Write `{key}.{ext}` members the way webdataset's TarWriter does (sorted extensions)."""
    for ext in sorted(members):
        data = members[ext]
        ti = tarfile.TarInfo(f"{key}.{ext}")
        ti.size = len(data)
        ti.mtime = int(mtime)
        ti.mode = 0o444
        ti.uname = ti.gname = _TAR_USER
        tar.addfile(ti, io.BytesIO(data))


def _members(meta: dict, image: bytes, ext: str) -> dict[str, bytes]:
    return {
        ext: image,
        "txt": (meta.get("text") or "").encode("utf-8"),
        # the colour grid is bytes, for the parquet only (near-duplicate removal reads it there)
        "json": orjson.dumps({k: v for k, v in meta.items() if k != "colour_grid"},
                             default=extra_columns.json_value, option=orjson.OPT_INDENT_2),
    }


def _table(rows: list[dict], extras: pa.Schema | None = None) -> pa.Table:
    """The shard's parquet: our columns, then the run's URL-list columns (`extras`)."""
    rows = sorted(rows, key=lambda r: r["key"])
    table = pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA)
    return extra_columns.append_columns(table, rows, extras) if extras is not None and len(extras) else table


def _extras_schema(part: Partition) -> pa.Schema | None:
    info = part.param("extras")
    return extra_columns.schema_from_info(info) if info else None


def _stats(rows: list[dict], start: float, end: float, extra: dict) -> dict:
    """img2dataset's `_stats.json` fields, plus our reasons and resume bookkeeping."""
    status = Counter(r["status"] for r in rows)
    messages = Counter(r["error_message"] if r["status"] != SUCCESS else SUCCESS for r in rows)
    reasons = Counter(r["reason"] for r in rows if r["reason"])
    return {
        "count": len(rows),
        "successes": status[SUCCESS],
        "failed_to_download": status[FAILED_TO_DOWNLOAD],
        "failed_to_resize": status[FAILED_TO_RESIZE],
        "duration": end - start,
        "start_time": start,
        "end_time": end,
        "status_dict": dict(messages.most_common(STATUS_DICT_MAX)),
        "reasons": dict(reasons),
        "transient_failures": sum(n for r, n in reasons.items() if r in TRANSIENT_REASONS),
        **extra,
    }


def _outcome(rows: list[dict], subset: str, outputs: list[str]) -> Outcome:
    out = Outcome(outputs=outputs)
    for r in rows:
        out.counts["samples"] += 1
        out.counts[r["status"]] += 1
        if r["status"] == SUCCESS:
            out.kept[subset] += 1
        else:
            out.drop(r["reason"], subset)
    return out


def _input_rows(path: str) -> list[dict]:
    fs, p = fsio.fs_and_path(path)
    with fs.open(p, "rb") as f:
        schema = pq.read_schema(f)
        f.seek(0)
        cols = [c for c in CANDIDATE_SCHEMA.names if c in schema.names]
        return pq.read_table(f, columns=cols).to_pylist()


# ---------------------------------------------------------------- stage: plan / process / run


def _read_json_or_none(path: str) -> dict | None:
    try:
        return fsio.read_json(path)  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - missing or unreadable: treated as absent
        return None


def _done_manifest(out: str, key: str, base: str, stats_path: str) -> dict | None:
    """The manifest of a shard done from this input and settings (`base`): downloaded with that
    fingerprint, or a `--retry-failed` merge of such a download (its stats say which)."""
    m = runner.done_manifest(out, NAME, key, base)
    if m is None:
        stats = _read_json_or_none(stats_path) or {}
        if stats.get("input_fingerprint") == base and stats.get("fingerprint"):
            m = runner.done_manifest(out, NAME, key, stats["fingerprint"])
    return m


def plan(out: str, wf, retry_failed: bool = False) -> list[Partition]:
    """One partition per current dedup part `unique/{subset}/part-NNNNN.parquet`. With `retry_failed`, a done shard
    with transient failures gets a new fingerprint and is merged; not under `runner.force`,
    which redoes every shard from scratch."""
    settings = output_settings(wf.download)
    retry_failed = retry_failed and not wf.runner.force
    extras = extra_columns.run_schema(out)
    carried = (("extras", extra_columns.schema_info(extras)),) if len(extras) else ()
    parts = []
    for subset, shard, path, upstream in shards.unique_parts(out):
        key = f"{subset}-{shard:05d}"
        base = runner.fingerprint(f"{subset}/{path.rsplit('/', 1)[-1]}", fsio.fingerprint_of(path), settings, upstream.ref,
                                  *([str(extras)] if carried else []))
        stats_path = fsio.join(out, shard_paths(subset, shard)["stats"])
        done = _done_manifest(out, key, base, stats_path)
        fp, retry = (done["fingerprint"] if done else base), False
        if retry_failed and done is not None and (_read_json_or_none(stats_path) or {}).get("transient_failures", 0) > 0:
            fp, retry = runner.fingerprint(base, "retry", done.get("finished")), True
        parts.append(
            Partition(
                key=key,
                inputs=(path,),
                fingerprint=fp,
                params=(("subset", subset), ("shard", shard), ("input_fingerprint", base), ("retry", retry), *carried),
                upstream=(upstream.ref,),
            )
        )
    return parts


def process(part: Partition, out: str, wf) -> Outcome:
    cfg = wf.download
    relax_malloc_trimming()
    subset, shard = part.param("subset"), part.param("shard")
    paths = shard_paths(subset, shard)
    if part.param("retry"):
        return _retry_shard(part, out, wf, paths)
    start = time.time()
    rows = _input_rows(part.inputs[0])
    digits = key_digits(len(rows))
    samples = [Sample(i, sample_key(shard, i, digits), row) for i, row in enumerate(rows)]
    del rows
    results: list[dict] = []
    with fsio.atomic_open(fsio.join(out, paths["tar"])) as f:
        with tarfile.open(fileobj=f, mode="w|", format=tarfile.USTAR_FORMAT) as tar:

            def sink(sample: Sample, meta: dict, image: bytes | None) -> None:
                results.append(meta)
                if image is not None:
                    add_sample(tar, sample.key, _members(meta, image, cfg.encode_format), time.time())

            download_samples(samples, cfg, sink)
    return _finish(part, out, paths, results, subset, start, retried=0)


def _finish(part: Partition, out: str, paths: dict[str, str], rows: list[dict], subset: str, start: float, retried: int) -> Outcome:
    fsio.write_parquet_atomic(_table(rows, _extras_schema(part)), fsio.join(out, paths["parquet"]))
    extra = {"input_fingerprint": part.param("input_fingerprint"), "fingerprint": part.fingerprint, "retried": retried}
    fsio.write_json_atomic(fsio.join(out, paths["stats"]), _stats(rows, start, time.time(), extra))
    return _outcome(rows, subset, [paths["tar"], paths["parquet"], paths["stats"]])


def _retry_shard(part: Partition, out: str, wf, paths: dict[str, str]) -> Outcome:
    """Refetch the transient failures of a done shard and merge the new successes in: the old
    tar is copied member by member (no image is decoded or downloaded again)."""
    cfg = wf.download
    start = time.time()
    fs, ppath = fsio.fs_and_path(fsio.join(out, paths["parquet"]))
    with fs.open(ppath, "rb") as f:
        old_rows = pq.read_table(f).to_pylist()
    previous = _read_json_or_none(fsio.join(out, paths["stats"])) or {}
    todo = [
        Sample(i, r["key"], r)
        for i, r in enumerate(old_rows)
        if r["status"] != SUCCESS and r["reason"] in TRANSIENT_REASONS
    ]
    by_key = {r["key"]: r for r in old_rows}
    tfs, tpath = fsio.fs_and_path(fsio.join(out, paths["tar"]))
    with fsio.atomic_open(fsio.join(out, paths["tar"])) as f, tfs.open(tpath, "rb") as old:
        with tarfile.open(fileobj=f, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
            with tarfile.open(fileobj=old, mode="r|") as src:
                for member in src:
                    tar.addfile(member, src.extractfile(member))

            def sink(sample: Sample, meta: dict, image: bytes | None) -> None:
                by_key[sample.key] = meta
                if image is not None:
                    add_sample(tar, sample.key, _members(meta, image, cfg.encode_format), time.time())

            download_samples(todo, cfg, sink)
    return _finish(part, out, paths, list(by_key.values()), part.param("subset"), start, int(previous.get("retried", 0)) + 1)


def run(out: str, wf, client, retry_failed: bool = False) -> StageReport:
    """Download every unique part; with `retry_failed`, refetch only transient failures of
    done shards (and run the shards not done yet as usual)."""
    return runner.run_stage(NAME, plan(out, wf, retry_failed=retry_failed), process, out, wf, client)

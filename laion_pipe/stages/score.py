"""The score stage: CLIP similarity, punsafe, pwatermark and aesthetic for every downloaded image.

One Dask task per download shard `images/{subset}/NNNNN.tar` (+ its parquet) writes
`scores/{subset}/NNNNN.parquet` with `key, uid, similarity, punsafe, pwatermark, aesthetic,
status, error_message`. Only numbers are written here: thresholds are `select`'s, and they are not
part of this stage's fingerprint, so changing one never reruns the models.

Why it is built the way it is:
- EN shards use `models.clip_en`, MULTI and NOLANG `models.clip_multi` (LAION-5B's split). The
  models are assembled and cached once per worker process by `models/scorer.py`; on which
  workers the tasks run (a `GPU` resource) is `cluster.model_task_resources`'s policy. This
  module plans, reads, batches and writes.
- The model is the expensive part, so it must never wait for JPEG decoding: a reader thread
  streams the tar into a pool of decode threads (PIL and torch release the GIL while decoding,
  resizing and normalising), a collator thread stacks the results into batches (pinned on CUDA)
  and the model's thread only moves ready batches to the device and runs the models, all joined
  by bounded queues. Threads rather than DataLoader processes because Dask worker processes are
  daemonic and may not fork children.
- Captions repeat (alt texts such as "image" or a product name): each distinct caption of a shard
  goes through the text tower once.
- A record that cannot be scored (undecodable image, image missing from the tar) gets status
  `score_error` and the drop reason of that name; it never fails the shard.
- `score.published` keeps a URL list's own scores (LAION's similarity, punsafe, ...) instead of
  the computed ones, pair by pair where the list has a value; each shard counts how many of each
  score were published and how many computed (`published.{score}`, `computed.{score}` in its
  manifest, which the statistics show).
"""
from __future__ import annotations

import io
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image

from .. import extra_columns, fsio, runner, shards
from ..cluster import model_task_resources
from ..models.scorer import ScoreModels, load_models, model_identity  # noqa: F401 - ScoreModels: what load_models returns
from ..runner import Outcome, Partition, StageReport
from ..schema import IMAGE_EXTS, SCORE_COLUMNS, SCORE_SCHEMA, STATUS_ERROR, STATUS_OK, SUBSETS

NAME = "score"
VERSION = 1  # bump when the meaning of an output column changes: every shard is then redone


# --- plan / run -----------------------------------------------------------------------------------


def resources(wf: Any) -> dict[str, float] | None:
    """Dask resources each score task asks for (see `cluster.model_task_resources`)."""
    return model_task_resources(wf.cluster, wf.score.request_gpu)


def plan(out: str, wf: Any) -> list[Partition]:
    """One partition per current download shard, keyed `{subset}-{shard}`."""
    parts = []
    for subset in SUBSETS:
        ident = model_identity(wf, subset)
        for shard, upstream in shards.image_shards(out, subset):
            paths = shards.image_shard(subset, shard)
            inputs = (fsio.join(out, paths["tar"]), fsio.join(out, paths["parquet"]))
            ids = [fsio.fingerprint_of(p) if fsio.exists(p) else "missing" for p in inputs]
            published = [sorted(wf.score.published.items())] if wf.score.published else []
            fp = runner.fingerprint(NAME, VERSION, ids, ident, wf.score.save_embeddings, upstream.ref, *published)
            parts.append(Partition(key=f"{subset}-{shard}", inputs=inputs, fingerprint=fp,
                                   params=(("subset", subset), ("shard", shard)), upstream=(upstream.ref,)))
    return parts


def run(out: str, wf: Any, client: Any) -> StageReport:
    return runner.run_stage(NAME, plan(out, wf), process, out, wf, client, resources=resources(wf))


# --- one shard ------------------------------------------------------------------------------------


def _decode(data: bytes, preprocessors: list[Callable[[Image.Image], torch.Tensor]]) -> tuple[torch.Tensor, ...]:
    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")  # forces the full decode: a truncated file fails here
    return tuple(p(rgb) for p in preprocessors)


_END = object()


def _one_torch_thread() -> None:
    """Decode-thread initializer: preprocessing tensors are small, and with torch's OpenMP backend
    every thread that calls a parallel op gets its own team of `cores` threads, so N decode threads
    would start N x cores threads beside the model's (torch's DataLoader sets one thread in its
    workers for the same reason). The OpenMP setting is per thread, so the model's own threads are
    untouched; other backends share one global setting, which must not be lowered: left alone."""
    if "parallel backend: OpenMP" in torch.__config__.parallel_info():
        torch.set_num_threads(1)


@dataclass
class _Batch:
    keys: list[str]
    tensors: list[torch.Tensor]  # one stacked [B, ...] tensor per preprocessor


@dataclass
class _Problem:
    kind: str  # decode_error | unexpected_member | duplicate_key | tar_unreadable
    key: str | None
    message: str
    offset: int


class _BatchPrefetcher:
    """Everything but the model, off the model's thread, in three stages joined by bounded queues:

    reader thread (streams the tar, submits images) -> decode pool (PIL decode + the models' own
    preprocessing) -> collator thread (waits for results in tar order, stacks them into batches,
    pins them on CUDA) -> the consumer, which only moves ready batches onto the device and runs
    the models. Records that cannot be used come out as `_Problem`s, in order with the batches.
    At most `prefetch_batches` batches wait ready, and as many more are being decoded."""

    def __init__(self, tar_path: str, wanted: set[str], preprocessors: list, batch_size: int, threads: int,
                 prefetch_batches: int, pin: bool) -> None:
        self.tar_path, self.wanted, self.pre = tar_path, wanted, preprocessors
        self.batch_size, self.pin = batch_size, pin
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="score-decode", initializer=_one_torch_thread)
        self.items: queue.Queue = queue.Queue(maxsize=batch_size * prefetch_batches)
        self.ready: queue.Queue = queue.Queue(maxsize=prefetch_batches)
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._read, name="score-read", daemon=True),
            threading.Thread(target=self._collate, name="score-collate", daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _put(self, q: queue.Queue, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue) -> Any:
        while not self.stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue
        return _END

    def _read(self) -> None:
        seen: set[str] = set()
        offset = 0
        try:
            for offset, sample in enumerate(shards.iter_tar_samples(self.tar_path)):
                key = sample["__key__"]
                image = shards.image_member(sample)
                if key not in self.wanted:
                    item: Any = _Problem("unexpected_member", key, "not a downloaded row of the shard's parquet", offset)
                elif key in seen:
                    item = _Problem("duplicate_key", key, "second sample with this key", offset)
                elif image is None:
                    item = _Problem("decode_error", key, f"no image member ({', '.join(IMAGE_EXTS)})", offset)
                else:
                    item = (key, offset, self.pool.submit(_decode, image[1], self.pre))
                seen.add(key)
                if not self._put(self.items, item):
                    return
        except Exception as e:  # a truncated or corrupt tar: what was read so far still counts
            self._put(self.items, _Problem("tar_unreadable", None, f"{type(e).__name__}: {e}", offset))
        finally:
            self._put(self.items, _END)

    def _collate(self) -> None:
        keys: list[str] = []
        tensors: list[tuple[torch.Tensor, ...]] = []

        def flush() -> bool:
            if not keys:
                return True
            stacked = [torch.stack([t[i] for t in tensors]) for i in range(len(tensors[0]))]
            if self.pin:
                stacked = [x.pin_memory() for x in stacked]
            ok = self._put(self.ready, _Batch(list(keys), stacked))
            keys.clear()
            tensors.clear()
            return ok

        try:
            while (item := self._get(self.items)) is not _END:
                if isinstance(item, _Problem):
                    if not self._put(self.ready, item):
                        return
                    continue
                key, offset, fut = item
                try:
                    tensors.append(fut.result())
                    keys.append(key)
                except Exception as e:
                    if not self._put(self.ready, _Problem("decode_error", key, f"{type(e).__name__}: {e}", offset)):
                        return
                if len(keys) >= self.batch_size and not flush():
                    return
            flush()
        except Exception as e:  # never leave the consumer waiting
            self._put(self.ready, _Problem("tar_unreadable", None, f"collate: {type(e).__name__}: {e}", -1))
        finally:
            self._put(self.ready, _END)

    def __iter__(self) -> Iterator[_Batch | _Problem]:
        while (item := self._get(self.ready)) is not _END:
            yield item

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)
        self.pool.shutdown(wait=True, cancel_futures=True)


def _read_downloaded(meta_path: str, published: dict[str, str] | None = None) -> pa.Table:
    """The shard's downloaded rows, with the URL-list columns `published` names where it has them."""
    fs, p = fsio.fs_and_path(meta_path)
    with fs.open(p, "rb") as f:
        names = pq.read_schema(f).names
        f.seek(0)
        extra = [c for c in dict.fromkeys((published or {}).values()) if c in names]
        t = pq.read_table(f, columns=["key", "status", "uid", "text", "url", *extra])
    return t.filter(pc.equal(t["status"], "success"))


def _published_scores(rows: pa.Table, published: dict[str, str]) -> dict[str, np.ndarray]:
    """score -> the list's published values (float32, NaN where a pair has none)."""
    out = {}
    for score, column in published.items():
        if column in rows.column_names:
            values = extra_columns.column(rows[column].to_pylist(), pa.float64())
            out[score] = values.to_numpy(zero_copy_only=False).astype(np.float32)
        else:
            out[score] = np.full(len(rows), np.nan, np.float32)
    return out


def process(part: Partition, out: str, wf: Any) -> Outcome:
    subset, shard = part.param("subset"), part.param("shard")
    tar_path, meta_path = part.inputs
    outcome = Outcome(max_errors=wf.runner.max_errors_kept)
    paths = shards.score_shard(subset, shard)

    published = extra_columns.published_columns(wf.score.published)
    rows = _read_downloaded(meta_path, published)
    keys: list[str] = rows["key"].to_pylist()
    uids: list[str] = rows["uid"].to_pylist()
    texts: list[str] = [t or "" for t in rows["text"].to_pylist()]
    index = {k: i for i, k in enumerate(keys)}
    n = len(keys)
    outcome.counts["rows"] = n

    scores = {c: np.full(n, np.nan, np.float32) for c in SCORE_COLUMNS}
    status = [STATUS_ERROR] * n
    errors: list[str | None] = ["image missing from the tar"] * n
    emb_rows: list[int] = []
    emb_parts: list[np.ndarray] = []

    if n:
        models = load_models(wf, subset)
        unique_texts = list(dict.fromkeys(texts))
        text_index = {t: i for i, t in enumerate(unique_texts)}
        text_row = np.array([text_index[t] for t in texts], dtype=np.int64)
        outcome.counts["unique_captions"] = len(unique_texts)
        bs = wf.score.batch_size
        threads = wf.score.decode_threads or min(8, os.cpu_count() or 1)
        prefetch = _BatchPrefetcher(
            tar_path, set(keys), models.preprocessors(), bs, threads, wf.score.prefetch_batches, pin=models.device.startswith("cuda")
        )
        try:
            # the text tower runs while the reader, decoders and collator prepare the first batches
            text_emb = models.encode_texts(unique_texts, bs)
            for item in prefetch:
                if isinstance(item, _Problem):
                    if item.key is not None and item.kind == "decode_error":
                        errors[index[item.key]] = item.message[:500]
                    outcome.error(item.kind, f"{item.key}: {item.message}" if item.key else item.message, item.offset)
                    continue
                batch_rows = [index[k] for k in item.keys]
                res = models.score_images(item.tensors, text_emb[torch.as_tensor(text_row[batch_rows])])
                for c in SCORE_COLUMNS:
                    scores[c][batch_rows] = res[c]
                for r in batch_rows:
                    status[r], errors[r] = STATUS_OK, None
                if wf.score.save_embeddings:
                    emb_rows.extend(batch_rows)
                    emb_parts.append(res["embedding"].cpu().numpy().astype(np.float16))
                outcome.counts["images_scored"] += len(batch_rows)
        finally:
            prefetch.close()

    ok = np.array([st == STATUS_OK for st in status], dtype=bool)
    for score, values in _published_scores(rows, published).items():
        use = ok & ~np.isnan(values)
        scores[score][use] = values[use]
        outcome.counts[f"published.{score}"] += int(use.sum())
        outcome.counts[f"computed.{score}"] += int((ok & ~use).sum())
    n_err = status.count(STATUS_ERROR)
    outcome.drop("score_error", subset, n_err)
    outcome.kept[subset] += n - n_err
    table = pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "uid": pa.array(uids, pa.string()),
            **{c: pa.array(scores[c], pa.float32()) for c in SCORE_COLUMNS},
            "status": pa.array(status, pa.string()),
            "error_message": pa.array(errors, pa.string()),
        },
        schema=SCORE_SCHEMA,
    )
    fsio.write_parquet_atomic(table, fsio.join(out, paths["scores"]))
    outcome.outputs.append(paths["scores"])
    if wf.score.save_embeddings:
        _write_embeddings(out, paths, rows, emb_rows, emb_parts, text_emb if n else None, text_row if n else None)
        outcome.outputs += [paths["img_emb"], paths["text_emb"], paths["metadata"]]
    return outcome


def _write_npy(path: str, arr: np.ndarray) -> None:
    with fsio.atomic_open(path) as f:
        np.save(f, arr)


def _write_embeddings(out, paths, rows, emb_rows, emb_parts, text_emb, text_row) -> None:
    """clip-retrieval's layout: row i of img_emb, text_emb and metadata are the same pair."""
    order = np.asarray(emb_rows, dtype=np.int64)
    dim = emb_parts[0].shape[1] if emb_parts else (text_emb.shape[1] if text_emb is not None else 0)
    img = np.concatenate(emb_parts) if emb_parts else np.zeros((0, dim), np.float16)
    txt = (
        text_emb[torch.as_tensor(text_row[order])].cpu().numpy().astype(np.float16)
        if text_emb is not None and len(order)
        else np.zeros((0, dim), np.float16)
    )
    meta = rows.take(pa.array(order)).select(["key", "uid", "url", "text"]).rename_columns(["key", "uid", "url", "caption"])
    _write_npy(fsio.join(out, paths["img_emb"]), img)
    _write_npy(fsio.join(out, paths["text_emb"]), txt)
    fsio.write_parquet_atomic(meta, fsio.join(out, paths["metadata"]))

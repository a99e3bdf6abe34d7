"""What the search page searches: a run's current indexes, their metadata, the CLIP that embedded
them, and the query -> filtered nearest pairs logic. No web code here (`app.py` is the web).

A run's indexes are found the way every stage finds its upstream: the index stage's current
partitions (`runner.current`), never a folder listing; an index whose metadata partitions are not
all current is reported as incomplete, not searched with rows that may no longer match.

Queries:
- text: encoded by the text tower of the CLIP that embedded the space (`models.clip`, the same
  loader as the score stage), then matched against the image index (or the caption index);
- an uploaded image: encoded by that CLIP's image tower;
- "more like this": the stored embedding of a result (the very vector the index holds, read
  from the score stage's `img_emb` file), matched against the image index.
Filters (subsets, kept/dropped, drop reasons, score and size ranges) become a bitmap of allowed
rows that faiss applies during the search (`knn.search`), so a filtered query returns the k
nearest allowed rows. IVF-PQ scores are approximate: the top max(10 k, 100) candidates are
re-scored exactly from the stored embeddings (`rerank`), so near-duplicates come first in the
order of their true cosine.
"""
from __future__ import annotations

import base64
import io
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import fsio, knn, runner
from ..schema import STATE_DIR
from ..stages import index as index_stage

RANGE_COLUMNS: tuple[str, ...] = ("similarity", "punsafe", "pwatermark", "aesthetic", "width", "height")
MAX_K = 1000
RERANK_FACTOR = 10
RERANK_MIN = 100


class SearchError(Exception):
    """A query or a run that cannot be answered; `status` is the HTTP status the page gets."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Filters:
    subsets: list[str] | None = None
    status: str = "all"  # all | kept | dropped
    reasons: list[str] | None = None  # drop reasons to show (dropped pairs only)
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return bool(self.subsets) or self.status != "all" or bool(self.reasons) or \
            any(lo is not None or hi is not None for lo, hi in self.ranges.values())  # fmt: skip


@dataclass
class Space:
    """One embedding space's indexes, metadata and embedding files."""

    name: str
    subsets: tuple[str, ...]
    clip: dict  # the ClipModelConfig that embedded it
    info: dict[str, dict]  # modality -> {modality}.json
    indexes: dict[str, Any]  # modality -> faiss index
    meta: pa.Table
    emb: dict[str, list[knn.Source]]  # modality -> embedding files (global ids = concatenation order)
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return self.meta.num_rows

    def __post_init__(self) -> None:
        m = self.meta
        for c in RANGE_COLUMNS:
            self.columns[c] = m[c].to_numpy(zero_copy_only=False).astype(np.float64)
        self.columns["kept"] = m["kept"].to_numpy(zero_copy_only=False).astype(bool)
        self.columns["subset"] = np.asarray(m["subset"].to_pylist(), dtype=object)
        self.columns["drop_reason"] = np.asarray([r or "" for r in m["drop_reason"].to_pylist()], dtype=object)

    def allowed(self, f: Filters) -> np.ndarray | None:
        """Rows the filters allow (None: all)."""
        if not f.active:
            return None
        ok = np.ones(self.rows, dtype=bool)
        if f.subsets:
            ok &= np.isin(self.columns["subset"], list(f.subsets))
        if f.status == "kept":
            ok &= self.columns["kept"]
        elif f.status == "dropped":
            ok &= ~self.columns["kept"]
        if f.reasons:
            ok &= np.isin(self.columns["drop_reason"], list(f.reasons))
        for name, (lo, hi) in f.ranges.items():
            col = self.columns[name]
            if lo is not None:
                ok &= col >= lo  # NaN fails a bound, as in select
            if hi is not None:
                ok &= col <= hi
        return ok


def _load_space(out: str, infos: dict[str, dict], meta_done: set[str]) -> Space:
    first = next(iter(infos.values()))
    files = first["files"]
    missing = [f["metadata"] for f in files if f["metadata"] not in meta_done]
    if missing:
        raise SearchError(f"the index of space {first['space']} is incomplete ({len(missing)} metadata files are not current, "
                          f"e.g. {missing[0]}): run `laion-pipe index --out {out}`", status=409)  # fmt: skip
    tables = [pq.read_table(fsio.join(out, f["metadata"])) for f in files]
    meta = pa.concat_tables(tables) if tables else index_stage.META_SCHEMA.empty_table()
    emb = {
        "image": knn.sources([fsio.join(out, f["img_emb"]) for f in files], [f["rows"] for f in files]),
        "text": knn.sources([fsio.join(out, f["text_emb"]) for f in files], [f["rows"] for f in files]),
    }
    indexes = {m: knn.read_index(fsio.join(out, info["index"])) for m, info in infos.items()}
    for m, idx in indexes.items():
        if idx.ntotal != meta.num_rows:
            raise SearchError(f"index {infos[m]['index']} holds {idx.ntotal} vectors but its metadata {meta.num_rows} rows: "
                              f"run `laion-pipe index --out {out}`", status=409)  # fmt: skip
    return Space(first["space"], tuple(first["subsets"]), first["clip"], infos, indexes, meta, emb)


def load_spaces(out: str) -> dict[str, Space]:
    """The current indexes of run directory `out`, by space. A run without any is a SearchError
    that says which command builds them."""
    done = runner.current(out, index_stage.NAME)
    meta_done = {o for d in done if d.key.startswith("meta-") for o in d.outputs}
    by_space: dict[str, dict[str, dict]] = {}
    for d in done:
        if d.key.startswith("meta-"):
            continue
        info_rel = next((o for o in d.outputs if o.endswith(".json")), None)
        if info_rel is None:
            continue
        info = fsio.read_json(fsio.join(out, info_rel))
        by_space.setdefault(info["space"], {})[info["modality"]] = info  # type: ignore[index]
    if not by_space:
        why = "the index stage has not run" if runner.read_plan(out, index_stage.NAME) is None else \
            "the index stage has no finished index (see `laion-pipe status`)"  # fmt: skip
        raise SearchError(f"no search index in {out}: {why}; build it with `laion-pipe index --out {out}`", status=409)
    return {name: _load_space(out, infos, meta_done) for name, infos in sorted(by_space.items())}


class Encoders:
    """The CLIPs of the spaces, loaded on first use and kept (loading takes longer than a query)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, Any] = {}

    def get(self, clip: dict) -> Any:
        from ..config.models import ClipModelConfig
        from ..models.clip import cached_clip

        key = repr(sorted(clip.items()))
        with self._lock:
            if key not in self._models:
                try:
                    self._models[key] = cached_clip(ClipModelConfig(**clip), "cpu")
                except Exception as e:  # weights moved or unreadable: say which
                    raise SearchError(f"cannot load the run's CLIP ({clip.get('model')}): {type(e).__name__}: {e}", 503) from None
            return self._models[key]

    def text(self, clip: dict, text: str) -> np.ndarray:
        return np.asarray(self.get(clip).encode_texts([text], batch_size=1), dtype=np.float32)

    def image(self, clip: dict, data: bytes) -> np.ndarray:
        import torch
        from PIL import Image, UnidentifiedImageError

        model = self.get(clip)
        try:
            with Image.open(io.BytesIO(data)) as im:
                rgb = im.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise SearchError(f"the uploaded file is not an image this server can read ({type(e).__name__})") from None
        with torch.no_grad():
            return np.asarray(model.encode_images(model.preprocess(rgb).unsqueeze(0)), dtype=np.float32)


def decode_data_url(data: str) -> bytes:
    """The bytes of a `data:...;base64,...` URL (or of bare base64)."""
    payload = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        return base64.b64decode(payload, validate=True)
    except (ValueError, TypeError):
        raise SearchError("image: not valid base64 (send a data: URL of the file)") from None


def _clean(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


@dataclass
class Hit:
    space: str
    id: int
    score: float


class Searcher:
    """A run directory's spaces and encoders; reloads the indexes when the index stage's plan changes
    (a rerun of `laion-pipe index` after select is seen without restarting the page)."""

    def __init__(self, out: str) -> None:
        import faiss

        # One query at a time gains little from OpenMP threads, and on a busy machine their
        # spin-waits cost more than the search (a flat scan of 250k rows: 58 ms on one thread,
        # 500 ms on two while other jobs held the cores).
        faiss.omp_set_num_threads(1)
        self.out = str(Path(out).resolve())
        self.encoders = Encoders()
        self._lock = threading.Lock()
        self._stamp: Any = None
        self._spaces: dict[str, Space] | None = None
        self._error: SearchError | None = None

    def _plan_stamp(self) -> Any:
        p = Path(self.out, STATE_DIR, index_stage.NAME, runner.PLAN_FILE)
        try:
            st = p.stat()
            return (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            return None

    def spaces(self) -> dict[str, Space]:
        with self._lock:
            stamp = self._plan_stamp()
            if stamp != self._stamp or (self._spaces is None and self._error is None):
                self._stamp = stamp
                try:
                    self._spaces, self._error = load_spaces(self.out), None
                except SearchError as e:
                    self._spaces, self._error = None, e
            if self._error is not None:
                raise self._error
            assert self._spaces is not None
            return self._spaces

    def space(self, name: str) -> Space:
        spaces = self.spaces()
        if name not in spaces:
            raise SearchError(f"no space {name!r} in this run; spaces: {', '.join(spaces)}", 404)
        return spaces[name]

    # --- queries ---------------------------------------------------------------------------------

    def query_vectors(self, *, text: str | None = None, image: bytes | None = None, like: tuple[str, int] | None = None,
                      space: str | None = None) -> dict[str, np.ndarray]:
        """Space -> the query vector for that space (one space for "more like this")."""
        given = [x is not None for x in (text, image, like)]
        if sum(given) != 1:
            raise SearchError("give exactly one of: text, image, like (a result to find more like)")
        if like is not None:
            sp = self.space(like[0])
            if not 0 <= like[1] < sp.rows:
                raise SearchError(f"like: row {like[1]} is not in space {sp.name} (it has {sp.rows} rows)", 404)
            return {sp.name: knn.read_rows(sp.emb["image"], np.array([like[1]]))}
        targets = [self.space(space)] if space else list(self.spaces().values())
        if text is not None:
            text = text.strip()
            if not text:
                raise SearchError("text: the query is empty")
            if len(text) > 1000:
                raise SearchError("text: the query is longer than 1000 characters")
            return {sp.name: self.encoders.text(sp.clip, text) for sp in targets}
        if not image:
            raise SearchError("image: the upload is empty")
        return {sp.name: self.encoders.image(sp.clip, image) for sp in targets}

    def search(self, vectors: dict[str, np.ndarray], *, k: int = 40, modality: str = "image", filters: Filters | None = None,
               nprobe: int | None = None) -> list[Hit]:
        """The k best hits over the given spaces (merged by score)."""
        if not 1 <= k <= MAX_K:
            raise SearchError(f"k: between 1 and {MAX_K}")
        if modality not in ("image", "text"):
            raise SearchError("modality: image or text")
        filters = filters or Filters()
        self._check_filters(filters)
        hits: list[Hit] = []
        for name, vec in vectors.items():
            sp = self.space(name)
            if modality not in sp.indexes:
                raise SearchError(f"space {name} has no {modality} index (index.text is off)", 404)
            index = sp.indexes[modality]
            allowed = sp.allowed(filters)
            exact = sp.info[modality]["kind"] == "flat"
            want = k if exact else min(sp.rows, max(k * RERANK_FACTOR, RERANK_MIN))
            scores, ids = knn.search(index, vec, want, allowed, nprobe)
            ids = ids[0][ids[0] >= 0]
            scores = scores[0][: len(ids)]
            if not exact and len(ids):
                scores, ids = rerank(sp.emb[modality], vec, ids)
            hits += [Hit(name, int(i), float(s)) for s, i in zip(scores[:k], ids[:k])]
        hits.sort(key=lambda h: -h.score)
        return hits[:k]

    def range(self, vectors: dict[str, np.ndarray], min_score: float, *, modality: str = "image", filters: Filters | None = None,
              nprobe: int | None = None, limit: int = 1_000_000) -> list[Hit]:
        """Every allowed row scoring above `min_score` (clip-retrieval's filter), best first."""
        filters = filters or Filters()
        self._check_filters(filters)
        hits: list[Hit] = []
        for name, vec in vectors.items():
            sp = self.space(name)
            scores, ids = knn.range_search(sp.indexes[modality], vec, min_score, sp.allowed(filters), nprobe)
            hits += [Hit(name, int(i), float(s)) for s, i in zip(scores, ids)]
        hits.sort(key=lambda h: -h.score)
        return hits[:limit]

    def _check_filters(self, f: Filters) -> None:
        if f.status not in ("all", "kept", "dropped"):
            raise SearchError("filters.status: all, kept or dropped")
        for name, bounds in f.ranges.items():
            if name not in RANGE_COLUMNS:
                raise SearchError(f"filters.ranges: unknown column {name!r}; known: {', '.join(RANGE_COLUMNS)}")
            lo, hi = bounds
            if lo is not None and hi is not None and lo > hi:
                raise SearchError(f"filters.ranges.{name}: the minimum {lo} is above the maximum {hi}")

    # --- rows ----------------------------------------------------------------------------------------

    def rows(self, hits: list[Hit]) -> list[dict]:
        """The result records the page shows."""
        out = []
        for h in hits:
            sp = self.space(h.space)
            row = {k: _clean(v) for k, v in sp.meta.slice(h.id, 1).to_pylist()[0].items()
                   if k not in ("tar", "offset", "size", "ext")}  # fmt: skip
            row.update(space=h.space, id=h.id, score=round(h.score, 4), image=f"/api/image/{h.space}/{h.id}")
            out.append(row)
        return out

    def image_bytes(self, space: str, row: int) -> tuple[bytes, str]:
        """A row's image bytes (read from its download tar at the recorded offset) and type."""
        sp = self.space(space)
        if not 0 <= row < sp.rows:
            raise SearchError(f"no row {row} in space {space}", 404)
        rec = sp.meta.slice(row, 1).select(["tar", "offset", "size", "ext"]).to_pylist()[0]
        if rec["offset"] is None:
            raise SearchError(f"row {row} of space {space} has no image in its download tar", 404)
        path = Path(self.out, rec["tar"]).resolve()
        if not path.is_relative_to(self.out):
            raise SearchError("image outside the run directory", 404)
        with open(path, "rb") as f:
            f.seek(rec["offset"])
            data = f.read(rec["size"])
        ext = rec["ext"]
        return data, {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}.get(ext, "application/octet-stream")


def rerank(srcs: list[knn.Source], query: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosines of the candidates (their stored embeddings, renormalised after float16), best first."""
    vecs = knn.read_rows(srcs, ids)
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    scores = vecs @ q
    order = np.argsort(-scores, kind="stable")
    return scores[order], ids[order]

"""The report's gallery: pairs a person can look at, next to the counts.

Counts say how many pairs a filter removed, not whether it removed the right ones; a few
thumbnails with their captions and scores do. Two kinds of groups:

- kept: for every dataset folder (`dataset/{name}/`, the language subsets and the recipes), a few
  of its pairs, read from its own shards (the parquet row and the `{key}.jpg` member);
- removed: for every score-based drop reason of select (low similarity, unsafe, watermark, low
  aesthetic), a few pairs that reason removed, with the score and the bound that removed them.
  Removed pairs are found with select's own code (`scored_rows`, `Recipe.reasons` over the
  run's recipes), so a pair shown under "unsafe" is one select dropped for that reason, with
  this run's bounds, not a re-derivation of them.

The choice is deterministic and costs the same on the demo and on LAION-5B: the shards of a
group are put in a fixed pseudo-random order (a hash of their name) and at most
`stats.gallery_scan_shards` of them are read; of their pairs, the `stats.gallery` with the
smallest hash of their key are shown (a seeded sample that does not favour the first shard).
Thumbnails are small JPEGs embedded as data URIs, so the report stays one file.
A shard or image that cannot be read is counted in `skipped`, never fails the stats stage.
"""
from __future__ import annotations

import base64
import heapq
import io
import math
import tarfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import mmh3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .. import fsio
from ..recipes import CHECK_ORDER, Recipe, resolve_recipes
from ..schema import STAGE_DIRS, SUBSETS

GALLERY_FILE = "gallery.json"
"""Written next to stats.json under `stats/`; `report.render_report` reads it."""

VERSION = 1
SEED = 20240601  # the hash seed of the sample: fixed, so the gallery is the same on every rerun

SCORES: tuple[str, ...] = ("similarity", "punsafe", "pwatermark", "aesthetic")
"""The scores shown with every pair (LAION-5B's columns plus the aesthetic score)."""

SCORE_REASONS: dict[str, str] = {
    "low_similarity": "similarity",
    "unsafe": "punsafe",
    "watermark": "pwatermark",
    "low_aesthetic": "aesthetic",
}
"""select's score-based drop reasons and the score each one bounds (`side_too_small` is not
a score: it is the image size, shown in the funnel only)."""

IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")

_KEPT_COLUMNS = ("key", "TEXT", "subset", "WIDTH", "HEIGHT", *SCORES)


@dataclass
class Sample:
    """One pair of the gallery. For removed pairs, `recipe`, `score`, `bound` and `strict` say
    which bound of which recipe removed it (`value` is the pair's score, None when missing)."""

    key: str
    subset: str
    caption: str
    scores: dict[str, float | None]
    width: int | None
    height: int | None
    source: str  # the tar that holds the image, relative to the run directory
    thumb: str | None  # data:image/jpeg;base64,... ; None when the image could not be read
    recipe: str = ""
    score: str = ""
    bound: float | None = None
    strict: bool = False

    @property
    def value(self) -> float | None:
        return self.scores.get(self.score) if self.score else None

    @property
    def rule(self) -> str:
        """The failed bound as text, e.g. "similarity 0.12 < 0.6" or "punsafe 0.93 ≥ 0.5"."""
        if not self.score:
            return ""
        v = self.value
        if v is None:
            return f"{self.score} missing (bound {self.bound:g})"
        if self.score in ("punsafe", "pwatermark"):  # maximums: keep value < bound
            op = "≥"
        else:  # minimums: keep value >= bound (> bound when strict)
            op = "≤" if self.strict else "<"
        return f"{self.score} {v:.3f} {op} {self.bound:g}"


@dataclass
class Group:
    """The pairs shown for one dataset folder (kind "kept") or one drop reason ("removed")."""

    kind: str
    name: str
    samples: list[Sample]
    candidates: int  # pairs of the scanned shards that belong to the group
    shards_scanned: int
    shards_total: int
    note: str = ""


@dataclass
class Gallery:
    per_group: int
    thumb_px: int
    scan_shards: int
    kept: list[Group] = field(default_factory=list)
    removed: list[Group] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # unreadable_shard, unreadable_image, missing_image

    def groups(self) -> list[Group]:
        return self.kept + self.removed

    def to_dict(self) -> dict:
        return {"version": VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> Gallery:
        def group(g: dict) -> Group:
            return Group(**{**g, "samples": [Sample(**s) for s in g["samples"]]})

        return cls(per_group=d["per_group"], thumb_px=d["thumb_px"], scan_shards=d["scan_shards"], kept=[group(g) for g in d["kept"]],
                   removed=[group(g) for g in d["removed"]], skipped=dict(d.get("skipped", {})))


# --- helpers --------------------------------------------------------------------------------------


def _rank(text: str) -> int:
    """The sample order: a seeded 64-bit hash, so the choice looks random but never changes."""
    return mmh3.hash64(text, seed=SEED, signed=False)[0]


def _spread(names: list[str], n: int) -> list[str]:
    """At most `n` of `names`, in a fixed pseudo-random order (not only the first shards)."""
    return sorted(names, key=_rank)[:n]


def _float(v: Any) -> float | None:
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def _read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    fs, p = fsio.fs_and_path(path)
    with fs.open(p, "rb") as f:
        pf = pq.ParquetFile(f)
        have = set(pf.schema_arrow.names)
        return pf.read(columns=[c for c in columns if c in have] if columns else None)


def thumbnail(data: bytes, size: int) -> str | None:
    """`data` (an encoded image) as a JPEG data URI whose longest side is at most `size`;
    None when it cannot be decoded. JPEGs decode in draft mode (a fraction of the work)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (size, size))
            rgb = im.convert("RGB")
        rgb.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=80, optimize=True)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _split_name(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the name up to the first dot of its last path part."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext


def _thumbs(tar_path: str, keys: set[str], size: int, skipped: Counter) -> dict[str, str | None]:
    """Thumbnails of the wanted keys' images; headers are read, other members skipped over."""
    found: dict[str, str | None] = {}
    left = set(keys)
    fs, p = fsio.fs_and_path(tar_path)
    try:
        with fs.open(p, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tf:
            for m in tf:
                if not left:
                    break
                key, ext = _split_name(m.name)
                if m.isfile() and key in left and ext.lower() in IMAGE_EXTS:
                    member = tf.extractfile(m)
                    found[key] = thumbnail(member.read(), size) if member is not None else None
                    left.discard(key)
    except (OSError, tarfile.TarError, EOFError):
        skipped["unreadable_shard"] += 1
    for key in left:
        found[key] = None
        skipped["missing_image"] += 1
    skipped["unreadable_image"] += sum(1 for k, v in found.items() if v is None and k not in left)
    return found


def _relative(out: str, path: str) -> str:
    """`path` relative to the run directory `out` (select's InputShard holds joined paths)."""
    base = out.rstrip("/") + "/"
    return path[len(base):] if path.startswith(base) else path


def _fill_thumbs(out: str, samples: list[Sample], size: int, skipped: Counter) -> None:
    by_tar: dict[str, list[Sample]] = {}
    for s in samples:
        by_tar.setdefault(s.source, []).append(s)
    for rel, group in sorted(by_tar.items()):
        got = _thumbs(fsio.join(out, rel), {s.key for s in group}, size, skipped)
        for s in group:
            s.thumb = got.get(s.key)


# --- kept pairs -----------------------------------------------------------------------------------


def dataset_folders(out: str) -> dict[str, list[str]]:
    """Dataset folder name -> its shard parquet files (relative to `out`) of the select stage's
    current plan, language subsets first, then the recipes by name."""
    from ..shards import current_dataset_parquets

    prefix = out.rstrip("/") + "/"
    found = {name: [p[len(prefix):] for p in paths] for name, paths in (current_dataset_parquets(out) or {}).items()}
    order = [s for s in SUBSETS if s in found] + sorted(k for k in found if k not in SUBSETS)
    return {k: sorted(found[k]) for k in order}


def _kept_group(out: str, name: str, shards: list[str], n: int, scan: int, skipped: Counter) -> Group:
    heap: list[tuple[int, int, Sample]] = []  # (-rank, -arrival, sample): ties never compare samples
    candidates = 0
    chosen = _spread(shards, scan)
    for rel in chosen:
        try:
            rows = _read_parquet(fsio.join(out, rel), list(_KEPT_COLUMNS)).to_pylist()
        except (OSError, pa.ArrowException):
            skipped["unreadable_shard"] += 1
            continue
        tar = rel[: -len(".parquet")] + ".tar"
        for r in rows:
            key = r.get("key")
            if key is None:
                continue
            candidates += 1
            s = Sample(key=key, subset=r.get("subset") or name, caption=r.get("TEXT") or "",
                       scores={k: _float(r.get(k)) for k in SCORES}, width=_int(r.get("WIDTH")),
                       height=_int(r.get("HEIGHT")), source=tar, thumb=None)
            heapq.heappush(heap, (-_rank(f"{name}/{key}"), -candidates, s))  # a max-heap of the n smallest ranks
            if len(heap) > n:
                heapq.heappop(heap)
    samples = [s for _, _, s in sorted(heap, key=lambda t: t[:2], reverse=True)]
    return Group("kept", name, samples, candidates, len(chosen), len(shards))


# --- removed pairs --------------------------------------------------------------------------------


def _bound(recipe: Recipe, reason: str, subset: str) -> tuple[float, bool] | None:
    """(bound, strict) that `recipe` applies for `reason` to `subset`'s pairs; None if it has none."""
    strict = SCORE_REASONS[reason] in recipe.greater_than
    if reason == "low_similarity":
        return dict(recipe.min_similarity)[subset], strict
    value = {"unsafe": recipe.max_punsafe, "watermark": recipe.max_pwatermark,
             "low_aesthetic": recipe.min_aesthetic}[reason]
    return None if value is None else (float(value), strict)


def _removed_groups(out: str, wf: Any, n: int, scan: int, skipped: Counter) -> list[Group]:
    from ..stages.select import input_shards, scored_rows, shard_reasons  # the stage's own reading

    recipes = resolve_recipes(wf.select)
    # funnel recipes (the language subsets) first: a pair is shown with the first recipe that removed it
    recipes = [r for r in recipes if r.funnel] + [r for r in recipes if not r.funnel]
    shards = input_shards(out)
    by_name = {s.name: s for s in shards}
    chosen = _spread(list(by_name), scan)
    heaps: dict[str, list[tuple[int, int, Sample]]] = {r: [] for r in SCORE_REASONS}
    seen: dict[str, set[str]] = {r: set() for r in SCORE_REASONS}
    candidates: Counter = Counter()
    for name in chosen:
        shard = by_name[name]
        mine = [r for r in recipes if shard.subset in r.subsets]
        if not mine:
            continue
        try:
            table = scored_rows(shard)
            codes = {r.name: shard_reasons(r, shard, table) for r in mine}
        except (OSError, pa.ArrowException, KeyError):
            skipped["unreadable_shard"] += 1
            continue
        rows: list[dict] | None = None
        tar = _relative(out, shard.tar)
        for r in mine:
            for reason in SCORE_REASONS:
                idx = np.flatnonzero(codes[r.name] == CHECK_ORDER.index(reason) + 1)
                if not len(idx):
                    continue
                rows = table.to_pylist() if rows is None else rows
                bound, strict = _bound(r, reason, shard.subset)  # type: ignore[misc]
                for i in idx.tolist():
                    row = rows[i]
                    ident = f"{shard.subset}/{row['key']}"
                    if ident in seen[reason]:
                        continue
                    seen[reason].add(ident)
                    candidates[reason] += 1
                    s = Sample(key=row["key"], subset=shard.subset, caption=row.get("text") or "",
                               scores={k: _float(row.get(k)) for k in SCORES}, width=_int(row.get("original_width")),
                               height=_int(row.get("original_height")), source=tar, thumb=None, recipe=r.name,
                               score=SCORE_REASONS[reason], bound=bound, strict=strict)
                    heap = heaps[reason]
                    heapq.heappush(heap, (-_rank(f"{reason}/{ident}"), -candidates[reason], s))
                    if len(heap) > n:
                        heapq.heappop(heap)
    groups = []
    for reason in SCORE_REASONS:
        applying = [r.name for r in recipes if any(_bound(r, reason, s) is not None for s in r.subsets)]
        note = ""
        if not shards:
            note = "no scored shards (scores/) in this run"
        elif not applying:
            note = f"no recipe of this run bounds {SCORE_REASONS[reason]}"
        elif not candidates[reason]:
            note = f"removed no pair in the shards read (bounded by: {', '.join(applying)})"
        samples = [s for _, _, s in sorted(heaps[reason], key=lambda t: t[:2], reverse=True)]
        groups.append(Group("removed", reason, samples, candidates[reason], len(chosen), len(shards), note))
    return groups


# --- the whole gallery ----------------------------------------------------------------------------


def build_gallery(out: str, wf: Any) -> Gallery | None:
    """The gallery of the run in `out` with the workflow's select and stats settings; None when
    `stats.gallery` is 0."""
    cfg = wf.stats
    if cfg.gallery == 0:
        return None
    skipped: Counter = Counter()
    g = Gallery(per_group=cfg.gallery, thumb_px=cfg.gallery_thumb, scan_shards=cfg.gallery_scan_shards)
    for name, shards in dataset_folders(out).items():
        g.kept.append(_kept_group(out, name, shards, cfg.gallery, cfg.gallery_scan_shards, skipped))
    g.removed = _removed_groups(out, wf, cfg.gallery, cfg.gallery_scan_shards, skipped)
    _fill_thumbs(out, [s for grp in g.groups() for s in grp.samples], cfg.gallery_thumb, skipped)
    g.skipped = {k: v for k, v in sorted(skipped.items()) if v}
    return g


def gallery_path(out: str) -> str:
    return fsio.join(out, STAGE_DIRS["stats"], GALLERY_FILE)


def write_gallery(out: str, wf: Any) -> list[str]:
    """Write `stats/gallery.json` (or remove a stale one when `stats.gallery` is 0); returns
    the paths written, relative to `stats/`."""
    g = build_gallery(out, wf)
    path = gallery_path(out)
    if g is None:
        if fsio.exists(path):
            fs, p = fsio.fs_and_path(path)
            fs.rm(p)
        return []
    fsio.write_json_atomic(path, g.to_dict())
    return [GALLERY_FILE]


def load_gallery(out: str) -> Gallery | None:
    """The saved gallery; None when there is none or it is not one this version wrote (the
    report then has no gallery until the stats stage runs again)."""
    path = gallery_path(out)
    if not fsio.exists(path):
        return None
    try:
        d = fsio.read_json(path)
        return Gallery.from_dict(d) if isinstance(d, dict) and d.get("version") == VERSION else None  # type: ignore[arg-type]
    except (ValueError, KeyError, TypeError):  # orjson.JSONDecodeError is a ValueError
        return None

"""The select stage: thresholds and recipes over the scores -> the final WebDataset shards.

For every recipe (`laion_pipe.recipes`: the three language subsets, shipped presets, named
recipes) the kept pairs of its subsets, in input order, are cut into output shards of
`select.samples_per_shard`: `dataset/{recipe}/NNNNN.tar` (members `{key}.jpg/.txt/.json`, image
bytes copied as downloaded) and `NNNNN.parquet` in DATASET_SCHEMA (LAION-5B's columns, then
`aesthetic, key, uid, subset`); a sample's `.json` holds that row plus img2dataset's keys
(`sample_json`). Output keys are img2dataset-style (output shard number, then the
index within it): a recipe drawing from several subsets would otherwise repeat input keys.

Planning counts the kept pairs of every input shard first (a cheap pass over two small parquet
files per shard, spread over the cluster), so that each output shard is one Dask task reading
just the slices of input shards it needs. A partition's fingerprint covers its recipe's bounds,
its slices and the identities of the inputs it reads: changing a threshold reruns select only,
and only for the recipes it touches.

Drop reasons (`low_similarity, side_too_small, unsafe, watermark, low_aesthetic`, the first bound
failed; then `near_duplicate, semantic_duplicate` for a pair every bound keeps but near-duplicate
removal found a better copy of, anywhere in the run: laion_pipe.neardup, run as select's first
phases) and kept counts go to the manifests of the default language-subset recipes, which are the
pipeline's funnel; other recipes report theirs as counts (`kept.{subset}`,
`dropped.{subset}.{reason}`) so that the funnel does not count a pair once per recipe. Every
recipe also gets `dataset/{name}/_recipe.json` (its bounds and totals) and `sizes.json` (samples
per tar, which open_clip's trainer reads to know a folder's size without being told).

A URL list's own columns (`extra_columns.py`) follow ours in the parquet and in each `.json`;
a list's integer `hash` (LAION's, of its URL and TEXT as published) is the `hash` column.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import mmh3
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import webdataset as wds

from .. import extra_columns, fsio, runner, shards
from ..neardup import phases as neardup
from ..recipes import KEEP, Recipe, apply_duplicates, count_reasons, resolve_recipes, score_columns
from ..runner import Outcome, Partition, StageReport
from ..schema import DATASET_SCHEMA, IMAGES_SCHEMA, STATUS_OK, SUBSETS

NAME = "select"
VERSION = 1
RECIPE_FILE = "_recipe.json"
SIZES_FILE = "sizes.json"
"""open_clip's per-folder sample counts: {"00000.tar": n, ...} (open_clip_train.data.get_dataset_size)."""

DOWNLOAD_COLUMNS = ["key", "url", "text", "language", "status", "width", "height", "original_width", "original_height", "sha256"]

SAMPLE_JSON_DOWNLOAD_KEYS: tuple[str, ...] = ("status", "width", "height", "original_width", "original_height", "sha256")
"""img2dataset's per-sample keys a sample's `.json` carries from the download stage, next to
`url, caption, key` and LAION-5B's columns: training scripts written for img2dataset output
filter on them (`json.get("original_width", 0) >= 256`)."""


def laion_hash(url: str, text: str) -> int:
    """LAION-5B's `hash` column: signed 64-bit MurmurHash3 (x64 128 variant, first half) of url + text."""
    return mmh3.hash64(url + text)[0]


# --- input shards ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputShard:
    subset: str
    shard: str
    scores: str  # scores/{subset}/NNNNN.parquet
    meta: str  # images/{subset}/NNNNN.parquet
    tar: str  # images/{subset}/NNNNN.tar
    upstream: tuple[str, str, str] | None = None  # the score partition it came from (runner.DonePartition.ref)

    @property
    def name(self) -> str:
        return f"{self.subset}/{self.shard}"

    def identity(self) -> list[str]:
        """Input identities for fingerprints; a missing file fails its partition, not the plan."""
        return [fsio.fingerprint_of(p) if fsio.exists(p) else "missing" for p in (self.scores, self.meta, self.tar)]


def input_shard(out: str, subset: str, shard: str, upstream: tuple[str, str, str] | None = None) -> InputShard:
    images = shards.image_shard(subset, shard)
    scores = shards.score_shard(subset, shard)["scores"]
    return InputShard(subset, shard, fsio.join(out, scores), fsio.join(out, images["parquet"]), fsio.join(out, images["tar"]),
                      upstream)  # fmt: skip


def input_shards(out: str, subsets: tuple[str, ...] = SUBSETS) -> list[InputShard]:
    """The score stage's current shards, in subset then shard order (the order kept pairs are
    written in)."""
    return [input_shard(out, subset, shard, done.ref) for subset in subsets for shard, done in shards.score_shards(out, subset)]


def _read(path: str, columns: list[str] | None = None) -> pa.Table:
    fs, p = fsio.fs_and_path(path)
    with fs.open(p, "rb") as f:
        return pq.read_table(f, columns=columns)


def _meta_schema(path: str) -> pa.Schema:
    fs, p = fsio.fs_and_path(path)
    with fs.open(p, "rb") as f:
        return pq.read_schema(f)


def carried_schema(shard: InputShard) -> pa.Schema:
    """The URL-list columns of an input shard's download parquet (empty for crawl pairs)."""
    schema = _meta_schema(shard.meta)
    names = extra_columns.extra_names(schema, IMAGES_SCHEMA.names)
    return pa.schema([schema.field(n) for n in names])


def _read_meta(path: str, extras: list[str]) -> pa.Table:
    """The download columns select carries (and `extras`, a URL list's columns), `phash` null for
    shards written before it existed."""
    has_phash = "phash" in _meta_schema(path).names
    meta = _read(path, DOWNLOAD_COLUMNS + (["phash"] if has_phash else []) + extras)
    return meta if has_phash else meta.append_column("phash", pa.nulls(meta.num_rows, pa.int64()))


def scored_rows(shard: InputShard, carried: bool = False) -> pa.Table:
    """The shard's successfully scored pairs joined with their download metadata (and, with
    `carried`, its URL-list columns), in input-key order: downloads finish (and so are written
    and scored) in whatever order the network allows, and the dataset must not depend on it (a
    rerun, or a run that lost a worker, gives the same shards, keys and bytes)."""
    scores = _read(shard.scores)
    scores = scores.filter(pc.equal(scores["status"], STATUS_OK)).drop_columns(["status", "error_message"])
    extras = carried_schema(shard).names if carried else []
    meta = _read_meta(shard.meta, extras)
    joined = scores.join(meta.select(DOWNLOAD_COLUMNS + ["phash"]), "key", join_type="left outer", use_threads=False).sort_by("key")
    if extras:  # by position, not in the join: a hash join takes no nested (list, struct) payload columns
        at = pc.index_in(joined["key"], value_set=meta["key"])
        for name in extras:
            joined = joined.append_column(meta.schema.field(name), meta[name].take(at))
    return joined


def shard_reasons(recipe: Recipe, shard: InputShard, table: pa.Table | None = None, drops: dict[str, str] | None = None) -> np.ndarray:
    """Per row of `scored_rows`: 0 = keep, else the code of its drop reason: the first bound it
    fails, else near-duplicate removal's reason (`drops`: key -> reason) when it has one."""
    table = scored_rows(shard) if table is None else table
    return apply_duplicates(recipe.reasons(shard.subset, score_columns(table)), table["key"].to_pylist(), drops)


def count_kept(recipes: list[Recipe], shard: InputShard, drop_files: list[str] | None = None) -> dict[str, int]:
    """Kept pairs of one input shard, per recipe that draws from its subset (a planning task);
    `drop_files`: near-duplicate removal's results, when it is on."""
    table = scored_rows(shard)
    drops = neardup.shard_drops("", [shard.name], drop_files).get(shard.name) if drop_files is not None else None
    return {r.name: int((shard_reasons(r, shard, table, drops) == KEEP).sum()) for r in recipes if shard.subset in r.subsets}


# --- plan -----------------------------------------------------------------------------------------


def _digits(samples_per_shard: int) -> int:
    return max(4, len(str(samples_per_shard - 1)))


def plan_recipe(recipe: Recipe, inputs: list[InputShard], kept: dict[str, int], samples_per_shard: int,
                extra_upstream: tuple[tuple[str, str, str], ...] = ()) -> list[Partition]:
    """Cut the recipe's kept pairs (input order) into output shards of `samples_per_shard`.

    Each output partition lists its slices (input shard, first, last kept index) and the input
    shards whose drop counts it reports (each input shard exactly once: the partition holding its
    first kept pair, or the one the next kept pair goes to, or the last)."""
    mine = [s for s in inputs if s.subset in recipe.subsets]
    total = sum(kept[s.name] for s in mine)
    n_parts = max(1, math.ceil(total / samples_per_shard))
    slices: list[list[tuple[str, int, int]]] = [[] for _ in range(n_parts)]
    owned: list[list[str]] = [[] for _ in range(n_parts)]
    by_name = {s.name: s for s in mine}
    pos = 0
    for s in mine:
        k = kept[s.name]
        owned[min(pos // samples_per_shard, n_parts - 1)].append(s.name)
        start = 0
        while start < k:
            part = (pos + start) // samples_per_shard
            take = min(k - start, (part + 1) * samples_per_shard - (pos + start))
            slices[part].append((s.name, start, start + take))
            start += take
        pos += k
    parts = []
    for i in range(n_parts):
        names = sorted({n for n, _, _ in slices[i]} | set(owned[i]))
        inputs = tuple(p for n in names for p in (by_name[n].scores, by_name[n].meta, by_name[n].tar))
        upstream = tuple(by_name[n].upstream for n in names if by_name[n].upstream is not None) + extra_upstream
        fp = runner.fingerprint(
            NAME, VERSION, recipe.identity(), samples_per_shard, slices[i], owned[i], {n: by_name[n].identity() for n in names},
            upstream,
        )  # fmt: skip
        parts.append(
            Partition(
                key=f"{recipe.name}-{i:05d}",
                inputs=inputs,
                fingerprint=fp,
                params=(("recipe", recipe.name), ("index", i), ("slices", tuple(slices[i])), ("owned", tuple(owned[i]))),
                upstream=upstream,
            )
        )
    return parts


def plan(out: str, wf: Any, client: Any = None, *, find_duplicates: bool = False) -> list[Partition]:
    """All output partitions of all recipes. With a Dask client the per-shard counting runs on
    the cluster; without one (e.g. `status`) it runs here. With `find_duplicates` (the stage's
    run) near-duplicate removal's phases run first (laion_pipe.neardup); otherwise the results
    they left are used, and a partition whose results are not current is pending."""
    recipes = resolve_recipes(wf.select)
    found = input_shards(out)
    ref = None
    if wf.select.neardup.enabled:
        if find_duplicates:
            report = neardup.run(out, wf, client, found)
            if report is not None and report.failed:
                raise RuntimeError(f"near-duplicate removal failed: {report.failed[0]['error']} (see laion-pipe status)")
        ref = neardup.reference(out, wf, found)
    elif find_duplicates:
        neardup.run(out, wf, client, found)  # off: removes earlier results
    files = neardup.drop_files(out) if ref is not None else None
    if client is not None and found:
        futures = client.map(count_kept, [recipes] * len(found), found, [files] * len(found), pure=False)
        counts = client.gather(futures)
    else:
        counts = [count_kept(recipes, s, files) for s in found]
    parts = []
    for r in recipes:
        kept = {s.name: c.get(r.name, 0) for s, c in zip(found, counts)}
        parts += plan_recipe(r, found, kept, wf.select.samples_per_shard, (ref,) if ref else ())
    return parts


def recipe_files(recipes: list[Recipe]) -> list[str]:
    """Files select writes beside its partitions (`_recipe.json` and `sizes.json` per current
    recipe): what the runner's sweep of `dataset/` keeps. A recipe no longer in the workflow
    loses its folder."""
    return [f"{shards.dataset_dir(r.name)}/{name}" for r in recipes for name in (RECIPE_FILE, SIZES_FILE)]


def run(out: str, wf: Any, client: Any) -> StageReport:
    recipes = resolve_recipes(wf.select)
    parts = plan(out, wf, client, find_duplicates=True)
    report = runner.run_stage(NAME, parts, process, out, wf, client, keep=recipe_files(recipes))
    _write_recipe_summaries(out, recipes, parts)
    return report


def _write_recipe_summaries(out: str, recipes: list[Recipe], parts: list[Partition]) -> None:
    for r in recipes:
        totals: Counter = Counter()
        sizes: dict[str, int] = {}
        for p in parts:
            if p.param("recipe") != r.name:
                continue
            m = runner.done_manifest(out, NAME, p.key, p.fingerprint)
            if m is not None:
                totals.update(m.get("counts", {}))
                if p.param("slices"):
                    sizes[shards.dataset_shard(r.name, p.param("index"))["tar"].rpartition("/")[2]] = int(m["counts"]["samples"])
        folder = fsio.join(out, shards.dataset_dir(r.name))
        fsio.write_json_atomic(
            fsio.join(folder, RECIPE_FILE),
            {"name": r.name, "description": r.description, "bounds": r.identity(), "shards": len(sizes), "counts": dict(totals)},
        )
        fsio.write_json_atomic(fsio.join(folder, SIZES_FILE), dict(sorted(sizes.items())))


# --- one output shard -----------------------------------------------------------------------------


def _parse_shard(name: str, out: str) -> InputShard:
    subset, shard = name.split("/")
    return input_shard(out, subset, shard)


def _wanted_rows(table: pa.Table, codes: np.ndarray, start: int, stop: int) -> pa.Table:
    kept_idx = np.flatnonzero(codes == KEEP)[start:stop]
    return table.take(pa.array(kept_idx, pa.int64()))


def _images(tar: str, keys: set[str]) -> Iterator[tuple[str, str, bytes]]:
    """(key, extension, image bytes) for the wanted keys, in tar order; the tar is streamed."""
    left = set(keys)
    for sample in shards.iter_tar_samples(tar):
        key = sample["__key__"]
        if key in left:
            image = shards.image_member(sample)
            if image is not None:
                left.discard(key)
                yield key, image[0], image[1]
            if not left:
                return


def _dataset_row(row: dict, subset: str, key: str, carried: tuple[str, ...] = ()) -> dict:
    """A dataset parquet row: LAION-5B's columns, ours, then the URL list's (`carried`)."""
    url, text = row["url"] or "", row["text"] or ""
    listed_hash = row.get(extra_columns.LIST_HASH)
    return {
        "URL": url,
        "TEXT": text,
        "WIDTH": row["original_width"],
        "HEIGHT": row["original_height"],
        "similarity": row["similarity"],
        "hash": listed_hash if isinstance(listed_hash, int) else laion_hash(url, text),
        "punsafe": row["punsafe"],
        "pwatermark": row["pwatermark"],
        "LANGUAGE": row["language"],
        "aesthetic": row["aesthetic"],
        "key": key,
        "uid": row["uid"],
        "subset": subset,
        "phash": row.get("phash"),
        **{c: row.get(c) for c in carried},
    }


def dataset_schema(carried: pa.Schema) -> pa.Schema:
    """DATASET_SCHEMA, then the URL-list columns; a list's integer `hash` is the `hash` column
    itself (LAION's own value), not a column of its own."""
    extra = [f for f in carried if not (f.name == extra_columns.LIST_HASH and pa.types.is_integer(f.type))]
    return pa.schema(list(DATASET_SCHEMA) + extra)


def _json_safe(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def sample_json(row: dict, download: dict) -> dict:
    """A dataset sample's `.json`: its parquet row (LAION-5B's columns, then ours) plus
    img2dataset's keys (`url, caption, key, status, width, height, original_width,
    original_height, sha256`, where the download stage recorded them)."""
    doc = dict(row)
    doc.update(url=row["URL"], caption=row["TEXT"], key=row["key"])
    for k in SAMPLE_JSON_DOWNLOAD_KEYS:
        if download.get(k) is not None:
            doc[k] = download[k]
    return _json_safe(doc)


def _copy_slice(tw, name: str, start: int, stop: int, scored: tuple[pa.Table, np.ndarray], index: int, first: int,
                digits: int, recipe: Recipe, outcome: Outcome, out: str, carried: tuple[str, ...] = ()) -> tuple[list[dict], int]:
    """Write kept pairs [start, stop) of one input shard into the output tar; their rows, and
    how many output keys the slice took. A pair's output key comes from its place in input-key
    order, not from where the tar has it, so keys and bytes per key never depend on tar order."""
    subset = name.split("/")[0]
    table, codes = scored
    by_key = {r["key"]: r for r in _wanted_rows(table, codes, start, stop).to_pylist()}
    place = {k: i for i, k in enumerate(sorted(by_key))}
    rows: list[dict] = []
    for in_key, ext, data in _images(_parse_shard(name, out).tar, set(by_key)):
        key = f"{index:05d}{first + place[in_key]:0{digits}d}"
        source = by_key.pop(in_key)
        row = _dataset_row(source, subset, key, carried)
        doc = orjson.dumps(sample_json(row, source), default=extra_columns.json_value)
        tw.write({"__key__": key, ext: data, "txt": row["TEXT"].encode(), "json": doc})
        rows.append(row)
    if recipe.funnel:
        outcome.kept[subset] += len(rows)
    outcome.counts[f"kept.{subset}"] += len(rows)
    for missing in sorted(by_key):
        outcome.error("missing_image", f"{name}: {missing} scored but not in the tar")
    return rows, len(place)


def process(part: Partition, out: str, wf: Any) -> Outcome:
    recipe = next(r for r in resolve_recipes(wf.select) if r.name == part.param("recipe"))
    index: int = part.param("index")
    outcome = Outcome(max_errors=wf.runner.max_errors_kept)
    digits = _digits(wf.select.samples_per_shard)
    paths = shards.dataset_shard(recipe.name, index)

    needed = {n for n, _, _ in part.param("slices")} | set(part.param("owned"))
    drops = neardup.shard_drops(out, needed) if wf.select.neardup.enabled else {}
    tables: dict[str, tuple[pa.Table, np.ndarray]] = {}
    sliced = {n for n, _, _ in part.param("slices")}
    schema = dataset_schema(extra_columns.merge_schemas(carried_schema(_parse_shard(n, out)) for n in sorted(sliced)))
    carried = tuple(schema.names[len(DATASET_SCHEMA):])
    for name in sorted(needed):
        shard = _parse_shard(name, out)
        table = scored_rows(shard, carried=name in sliced)
        tables[name] = (table, shard_reasons(recipe, shard, table, drops.get(name)))

    # drops and keeps of the input shards this partition reports
    for name in part.param("owned"):
        subset = name.split("/")[0]
        _, codes = tables[name]
        for reason, n in count_reasons(codes).items():
            if recipe.funnel:
                outcome.drop(reason, subset, n)
            outcome.counts[f"dropped.{subset}.{reason}"] += n

    rows: list[dict] = []
    if part.param("slices"):
        with fsio.atomic_open(fsio.join(out, paths["tar"])) as f, wds.TarWriter(f, encoder=False) as tw:
            taken = 0
            for name, start, stop in part.param("slices"):
                got, n = _copy_slice(tw, name, start, stop, tables[name], index, taken, digits, recipe, outcome, out, carried)
                rows += got
                taken += n
        rows.sort(key=lambda r: r["key"])
        fsio.write_parquet_atomic(pa.Table.from_pylist(rows, schema=schema), fsio.join(out, paths["parquet"]))
        outcome.outputs += [paths["tar"], paths["parquet"]]
    outcome.counts["samples"] = len(rows)
    return outcome

"""The index stage: faiss kNN indexes of a run's CLIP image and caption embeddings, and the
metadata that says what each indexed pair is and what became of it.

Input: the score stage's current partitions (`shards.score_shards`, never a folder listing) and
the embeddings they saved in clip-retrieval's layout (`scores/{subset}/embeddings/img_emb/
img_emb_NNNNN.npy`, `text_emb/...`, `metadata/...`, row i of each the same pair; `score.save_embeddings`,
on by default for this stage), plus the select stage's current partitions (which pairs each
recipe kept). Output, one folder per embedding space, in clip-retrieval's index layout:

    index/{space}/image.index, image.json         faiss index of the image embeddings + what it is
    index/{space}/text.index, text.json           the same for the captions (index.text)
    index/{space}/metadata/metadata_{subset}_{shard}.parquet   one per score shard, row i = row i of
                                                  its img_emb file; files in name order = index ids

A space is the set of subsets embedded by the same CLIP: LAION-5B scored EN with `clip_en` and
MULTI/NOLANG with `clip_multi`, whose image embeddings are not comparable, so each gets its own
index (`clip_en`, `clip_multi`), or one (`clip`) when both are the same model (the demo).

Every scored pair is indexed, kept or dropped: a metadata row says `kept` (in its subset's
recipe's dataset, read from select's outputs) and otherwise `drop_reason` (select's reason, the
first bound it fails, as `recipes.Recipe.reasons` gives it), `recipes` (every recipe whose dataset
holds it), its scores, and where its image bytes lie (`tar`, `offset`, `size`) so a page can show
it without unpacking anything.

Partitions (each resumable, as every stage's):
- `meta-{subset}-{shard}`: one metadata file per score shard;
- `{space}-{image|text}`: the index. Up to `index.exact_max_rows` embeddings, one task builds an
  exact flat index. Beyond, IVF-PQ (`knn.choose`) in two phases before it, like dedup's:
  `index.train` trains the quantizers on a seeded sample (`_work/index/{space}/{modality}.trained.index`),
  `index.add` has one task per `index.rows_per_task` embeddings encode its files into a copy of
  it (`_work/index/{space}/{modality}-NNNNN.index`), and the index partition merges the copies'
  lists. The work files go once the stage is complete.
An index partition depends on the embeddings only: a new threshold or blocklist reruns the
metadata partitions (cheap), never the index.
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import clean, fsio, knn, runner, shards
from ..config import ConfigError
from ..recipes import CODE_REASONS
from ..recipes import KEEP, resolve_recipes
from ..runner import DonePartition, Outcome, Partition, StageReport
from ..schema import IMAGE_EXTS, SUBSETS

NAME = "index"
TRAIN_STAGE = "index.train"
ADD_STAGE = "index.add"
VERSION = 1
OUT_DIR = "index"
MODALITIES = ("image", "text")
NOT_SELECTED = "not_selected"
"""drop_reason of a pair that select's current recipes would keep but its dataset does not hold
(select has not run with this workflow's settings, or its partition failed)."""

META_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("uid", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("subset", pa.string()),
        ("language", pa.string()),
        ("width", pa.int64()),  # original size, as LAION's WIDTH/HEIGHT
        ("height", pa.int64()),
        ("similarity", pa.float32()),
        ("punsafe", pa.float32()),
        ("pwatermark", pa.float32()),
        ("aesthetic", pa.float32()),
        ("kept", pa.bool_()),
        ("drop_reason", pa.string()),
        ("recipes", pa.list_(pa.string())),
        ("tar", pa.string()),  # the download shard's tar, relative to the run directory
        ("offset", pa.int64()),  # the image member's bytes in it
        ("size", pa.int64()),
        ("ext", pa.string()),
    ]
)


# --- spaces and sources -----------------------------------------------------------------------------


def spaces(wf: Any) -> dict[str, tuple[str, ...]]:
    """Embedding space -> its subsets: one space per distinct similarity CLIP."""
    same = wf.models.clip_en.model_dump(mode="json") == wf.models.clip_multi.model_dump(mode="json")
    if same:
        return {"clip": SUBSETS}
    return {"clip_en": ("en",), "clip_multi": tuple(s for s in SUBSETS if s != "en")}


def space_of(wf: Any, subset: str) -> str:
    return next(name for name, subs in spaces(wf).items() if subset in subs)


def clip_config(wf: Any, space: str) -> Any:
    """The CLIP whose towers embedded `space` (and encode its queries)."""
    return wf.models.clip_multi if space == "clip_multi" else wf.models.clip_en


@dataclass(frozen=True)
class SourceShard:
    """One score shard as the index reads it."""

    subset: str
    shard: str
    done: DonePartition
    rows: int  # embeddings saved for it

    @property
    def paths(self) -> dict[str, str]:
        return shards.score_shard(self.subset, self.shard)

    def metadata(self, space: str) -> str:
        return f"{OUT_DIR}/{space}/metadata/metadata_{self.subset}_{self.shard}.parquet"


def source_shards(out: str, wf: Any) -> dict[str, list[SourceShard]]:
    """The current score shards of each space, in subset then shard order (= index id order).
    A shard scored without embeddings is a ConfigError that says how to get them."""
    found: dict[str, list[SourceShard]] = {}
    for space, subsets in spaces(wf).items():
        found[space] = []
        for subset in subsets:
            for shard, done in shards.score_shards(out, subset):
                paths = shards.score_shard(subset, shard)
                missing = [k for k in ("img_emb", "text_emb", "metadata") if paths[k] not in done.outputs]
                if missing:
                    raise ConfigError(
                        f"index: score shard {subset}/{shard} has no saved embeddings (the score stage ran with "
                        f"score.save_embeddings false); rerun `laion-pipe score --out {out} --set score.save_embeddings=true`, "
                        f"then `laion-pipe index --out {out}`"
                    )
                rows = knn.npy_shape(fsio.join(out, paths["img_emb"]))[0]
                found[space].append(SourceShard(subset, shard, done, rows))
    return found


def _dim(out: str, srcs: list[SourceShard]) -> int:
    for s in srcs:
        if s.rows:
            return int(knn.npy_shape(fsio.join(out, s.paths["img_emb"]))[1])
    return 0


def check(wf: Any) -> None:
    """Before any work: the index reads the embeddings the score stage saves."""
    if not wf.score.save_embeddings:
        raise ConfigError(
            "index: score.save_embeddings is false in this workflow, so the score stage saves no embeddings to index; "
            "set it to true (and rerun score), or leave the index stage out (--stages extract:select,stats)"
        )
    return None


# --- plan ---------------------------------------------------------------------------------------------


def _select_by_score(out: str) -> dict[tuple, list[DonePartition]]:
    """Score partition ref -> the current select partitions that read it."""
    found: dict[tuple, list[DonePartition]] = {}
    for d in runner.current(out, "select"):
        for ref in d.manifest.get("upstream", ()):
            found.setdefault(tuple(ref), []).append(d)
    return found


def plan_meta(out: str, wf: Any, by_space: dict[str, list[SourceShard]]) -> list[Partition]:
    recipes = [r.identity() for r in resolve_recipes(wf.select)]
    readers = _select_by_score(out)
    parts = []
    for space, srcs in by_space.items():
        for s in srcs:
            readers_of = readers.get(s.done.ref, [])
            sel = sorted({d.ref for d in readers_of})
            sel_files = tuple(sorted({fsio.join(out, o) for d in readers_of for o in d.outputs if o.endswith(".parquet")}))
            fp = runner.fingerprint(NAME, VERSION, "meta", s.done.ref, sel, recipes)
            parts.append(
                Partition(
                    key=f"meta-{s.subset}-{s.shard}",
                    inputs=tuple(fsio.join(out, s.paths[k]) for k in ("metadata", "scores")) + sel_files,
                    fingerprint=fp,
                    params=(("subset", s.subset), ("shard", s.shard), ("output", s.metadata(space)), ("select", sel_files)),
                    upstream=(s.done.ref, *sel),
                )
            )
    return parts


def _emb_sources(out: str, srcs: list[SourceShard], modality: str) -> tuple[tuple[str, int, int], ...]:
    key = "img_emb" if modality == "image" else "text_emb"
    return tuple((fsio.join(out, s.paths[key]), src.rows, src.offset)
                 for s, src in zip(srcs, knn.sources([s.paths[key] for s in srcs], [s.rows for s in srcs])))  # fmt: skip


def _describe(space: str, wf: Any, srcs: list[SourceShard]) -> tuple:
    """What `{modality}.json` says about the space besides the index itself (as params: hashable)."""
    files = tuple((s.subset, s.shard, s.metadata(space), s.paths["img_emb"], s.paths["text_emb"], s.rows) for s in srcs)
    return (("space", space), ("subsets", spaces(wf)[space]), ("files", files))


@dataclass
class IndexPlan:
    train: list[Partition]
    add: list[Partition]
    build: list[Partition]  # flat builds and IVF merges (stage `index`)


def plan_indexes(out: str, wf: Any, by_space: dict[str, list[SourceShard]]) -> IndexPlan:
    plan = IndexPlan([], [], [])
    modalities = MODALITIES if wf.index.text else MODALITIES[:1]
    for space, srcs in by_space.items():
        rows = sum(s.rows for s in srcs)
        if not rows:
            continue
        try:
            spec = knn.choose(rows, _dim(out, srcs), wf.index)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        score_ref = runner.stage_ref("score", [s.done for s in srcs])
        describe = _describe(space, wf, srcs)
        for modality in modalities:
            emb = _emb_sources(out, srcs, modality)
            outputs = (f"{OUT_DIR}/{space}/{modality}.index", f"{OUT_DIR}/{space}/{modality}.json")
            common = (("modality", modality), ("spec", tuple(spec.to_json().items())), ("outputs", outputs), *describe)
            key = f"{space}-{modality}"
            if spec.kind == "flat":
                fp = runner.fingerprint(NAME, VERSION, key, spec.to_json(), score_ref)
                plan.build.append(Partition(key, tuple(p for p, _, _ in emb), fp,
                                            params=(*common, ("sources", emb)), upstream=(score_ref,)))  # fmt: skip
                continue
            trained = f"{clean.work_dir(NAME)}/{space}/{modality}.trained.index"
            train_fp = runner.fingerprint(TRAIN_STAGE, VERSION, key, spec.to_json(), wf.index.seed, score_ref)
            train_part = Partition(key, tuple(p for p, _, _ in emb), train_fp, upstream=(score_ref,),
                                   params=(*common, ("sources", emb), ("trained", trained), ("seed", wf.index.seed)))  # fmt: skip
            plan.train.append(train_part)
            adds = []
            for k, chunk in enumerate(_chunks(emb, wf.index.rows_per_task)):
                refs = tuple(s.done.ref for s in srcs if fsio.join(out, s.paths["img_emb" if modality == "image" else "text_emb"])
                             in {p for p, _, _ in chunk})  # fmt: skip
                part_path = f"{clean.work_dir(NAME)}/{space}/{modality}-{k:05d}.index"
                fp = runner.fingerprint(ADD_STAGE, VERSION, train_fp, chunk, refs)
                adds.append(Partition(f"{key}-{k:05d}", tuple(p for p, _, _ in chunk), fp,
                                      params=(("sources", chunk), ("trained", trained), ("output", part_path)),
                                      upstream=((TRAIN_STAGE, key, train_fp), *refs)))  # fmt: skip
            plan.add += adds
            merge_fp = runner.fingerprint(NAME, VERSION, key, [(a.key, a.fingerprint) for a in adds])
            plan.build.append(Partition(key, tuple(fsio.join(out, a.param("output")) for a in adds), merge_fp,
                                        params=(*common, ("trained", trained), ("parts", tuple(a.param("output") for a in adds))),
                                        upstream=tuple((ADD_STAGE, a.key, a.fingerprint) for a in adds)))  # fmt: skip
    return plan


def _chunks(emb: tuple[tuple[str, int, int], ...], rows_per_task: int) -> list[tuple]:
    """Consecutive files, about `rows_per_task` rows per chunk (a file is never split)."""
    chunks, cur, n = [], [], 0
    for item in emb:
        if cur and n + item[1] > rows_per_task:
            chunks.append(tuple(cur))
            cur, n = [], 0
        cur.append(item)
        n += item[1]
    if cur:
        chunks.append(tuple(cur))
    return chunks


# --- run ----------------------------------------------------------------------------------------------


def run(out: str, wf: Any, client: Any) -> StageReport:
    """The metadata, then (IVF-PQ spaces) training and adding, then the indexes."""
    check(wf)
    by_space = source_shards(out, wf)
    meta = plan_meta(out, wf, by_space)
    plan = plan_indexes(out, wf, by_space)
    if clean.work_removed(out, NAME) and not _all_done(out, plan):
        runner.prune(out, TRAIN_STAGE, [])  # their outputs were the work files
        runner.prune(out, ADD_STAGE, [])
        clean.forget_work_removed(out, NAME)
    reports = [runner.run_stage(TRAIN_STAGE, plan.train, process_train, out, wf, client)]
    if not reports[-1].failed:
        reports.append(runner.run_stage(ADD_STAGE, plan.add, process_add, out, wf, client))
    if reports[-1].failed:  # the indexes cannot be merged; the metadata can still be written
        build = [p for p in plan.build if p.param("parts") is None]
    else:
        build = plan.build
    reports.append(runner.run_stage(NAME, meta + build, process, out, wf, client))
    if len(build) == len(plan.build) and not any(r.failed for r in reports):
        clean.remove_work(out, NAME)
    return _merge(reports)


def _all_done(out: str, plan: IndexPlan) -> bool:
    return all(runner.is_done(out, NAME, p.key, p.fingerprint) for p in plan.build)


def _merge(reports: list[StageReport]) -> StageReport:
    merged = StageReport(stage=NAME)
    for r in reports:
        merged.planned += r.planned
        merged.done += r.done
        merged.skipped += r.skipped
        merged.counts.update(r.counts)
        merged.failed += [{**f, "key": f"{r.stage}/{f['key']}"} if r.stage != NAME else f for f in r.failed]
        merged.seconds += r.seconds
    merged.seconds = round(merged.seconds, 3)
    return merged


# --- one partition --------------------------------------------------------------------------------------


def process(part: Partition, out: str, wf: Any) -> Outcome:
    if part.key.startswith("meta-"):
        return process_meta(part, out, wf)
    return process_build(part, out, wf)


def _read(path: str, columns: list[str] | None = None) -> pa.Table:
    fs, p = fsio.fs_and_path(path)
    with fs.open(p, "rb") as f:
        return pq.read_table(f, columns=columns)


def _image_members(tar_path: str, keys: set[str]) -> dict[str, tuple[int, int, str]]:
    """key -> (offset, size, extension) of each wanted key's image member, from the tar's headers."""
    found: dict[str, tuple[int, int, str]] = {}
    fs, p = fsio.fs_and_path(tar_path)
    with fs.open(p, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tf:
        for m in tf:
            if not m.isfile():
                continue
            key, ext = shards.split_name(m.name)
            if key in keys and ext in IMAGE_EXTS and key not in found:
                found[key] = (m.offset_data, m.size, ext)
    return found


def process_meta(part: Partition, out: str, wf: Any) -> Outcome:
    """One score shard's metadata rows, aligned with its embedding rows."""
    from . import select

    subset, shard = part.param("subset"), part.param("shard")
    outcome = Outcome(max_errors=wf.runner.max_errors_kept)
    paths = shards.score_shard(subset, shard)
    images = shards.image_shard(subset, shard)
    emb = _read(fsio.join(out, paths["metadata"]))  # key, uid, url, caption: row i = embedding row i
    n = emb.num_rows
    keys = emb["key"].to_pylist()
    scores = _read(fsio.join(out, paths["scores"]), ["key", "similarity", "punsafe", "pwatermark", "aesthetic"])
    down = _read(fsio.join(out, images["parquet"]), ["key", "language", "original_width", "original_height"])
    order = pa.table({"key": emb["key"], "_row": pa.array(np.arange(n, dtype=np.int64))})
    joined = order.join(scores, "key", join_type="left outer", use_threads=False)
    joined = joined.join(down, "key", join_type="left outer", use_threads=False).sort_by("_row")

    # which recipes' datasets hold each pair (select's outputs), and why the others dropped it
    uids = emb["uid"].to_pylist()
    want = set(uids)
    in_recipe: dict[str, set[str]] = {}
    for path in part.param("select"):
        rec = path.rsplit("/", 2)[-2]
        t = _read(path, ["uid"])
        hit = t.filter(pc.is_in(t["uid"], value_set=pa.array(list(want), pa.string())))["uid"].to_pylist()
        in_recipe.setdefault(rec, set()).update(hit)
    recipes = [r for r in resolve_recipes(wf.select) if subset in r.subsets]
    own = next((r for r in recipes if r.funnel), recipes[0] if recipes else None)
    reason_of: dict[str, str] = {}
    if own is not None:
        src = select.input_shard(out, subset, shard)
        table = select.scored_rows(src)
        drops = None
        if wf.select.neardup.enabled:  # select's near-duplicate results: the same reasons as the dataset's
            from ..neardup import phases as neardup

            drops = neardup.shard_drops(out, [src.name]).get(src.name)
        codes = select.shard_reasons(own, src, table, drops)
        reason_of = {k: ("" if c == KEEP else CODE_REASONS[c - 1]) for k, c in zip(table["key"].to_pylist(), codes.tolist())}
    kept, reasons, holders = [], [], []
    for key, uid in zip(keys, uids):
        held = sorted(r.name for r in recipes if uid in in_recipe.get(r.name, ()))
        is_kept = (own.name in held) if own is not None else bool(held)
        reason = None
        if not is_kept:
            reason = reason_of.get(key) or NOT_SELECTED
            outcome.counts[f"dropped.{reason}"] += 1
        else:
            outcome.counts["kept"] += 1
        kept.append(is_kept)
        reasons.append(reason)
        holders.append(held)
    members = _image_members(fsio.join(out, images["tar"]), set(keys))
    for key in keys:
        if key not in members:
            outcome.error("missing_image", f"{subset}/{shard}: {key} has an embedding but no image in the tar")
    table = pa.table(
        {
            "key": emb["key"],
            "uid": emb["uid"],
            "url": emb["url"],
            "caption": emb["caption"],
            "subset": pa.array([subset] * n, pa.string()),
            "language": joined["language"],
            "width": joined["original_width"].cast(pa.int64()),
            "height": joined["original_height"].cast(pa.int64()),
            **{c: joined[c].cast(pa.float32()) for c in ("similarity", "punsafe", "pwatermark", "aesthetic")},
            "kept": pa.array(kept, pa.bool_()),
            "drop_reason": pa.array(reasons, pa.string()),
            "recipes": pa.array(holders, pa.list_(pa.string())),
            "tar": pa.array([images["tar"]] * n, pa.string()),
            "offset": pa.array([members.get(k, (None,))[0] for k in keys], pa.int64()),
            "size": pa.array([members.get(k, (None, None))[1] for k in keys], pa.int64()),
            "ext": pa.array([members.get(k, (None, None, None))[2] for k in keys], pa.string()),
        },
        schema=META_SCHEMA,
    )
    fsio.write_parquet_atomic(table, fsio.join(out, part.param("output")))
    outcome.outputs.append(part.param("output"))
    outcome.counts["rows"] = n
    return outcome


def _spec(part: Partition) -> knn.IndexSpec:
    return knn.IndexSpec(**dict(part.param("spec")))


def _srcs(items: tuple) -> list[knn.Source]:
    return [knn.Source(p, rows, offset) for p, rows, offset in items]


def process_train(part: Partition, out: str, wf: Any) -> Outcome:
    """Train the IVF-PQ quantizers on a seeded uniform sample of the space's embeddings."""
    spec = _spec(part)
    srcs = _srcs(part.param("sources"))
    ids = knn.sample_ids(spec.rows, spec.train_rows, part.param("seed"))
    index = knn.train(spec, knn.read_rows(srcs, ids), seed=part.param("seed"))
    knn.write_index(index, fsio.join(out, part.param("trained")))
    outcome = Outcome(outputs=[part.param("trained")])
    outcome.counts["train_rows"] = len(ids)
    return outcome


def process_add(part: Partition, out: str, wf: Any) -> Outcome:
    """Encode a chunk of files into a copy of the trained index, with their global ids."""
    index = knn.read_index(fsio.join(out, part.param("trained")))
    srcs = _srcs(part.param("sources"))
    knn.add_sources(index, srcs, with_ids=True)
    knn.write_index(index, fsio.join(out, part.param("output")))
    outcome = Outcome(outputs=[part.param("output")])
    outcome.counts["rows_added"] = int(index.ntotal)
    return outcome


def process_build(part: Partition, out: str, wf: Any) -> Outcome:
    """A flat index of every row, or the merge of the IVF-PQ parts; then its description."""
    import time

    t0 = time.time()
    spec = _spec(part)
    if part.param("parts") is None:
        index = knn.build_flat(spec, _srcs(part.param("sources")))
    else:
        parts = (knn.read_index(fsio.join(out, p)) for p in part.param("parts"))
        index = knn.merge(knn.read_index(fsio.join(out, part.param("trained"))), parts)
    if index.ntotal != spec.rows:
        raise RuntimeError(f"{part.key}: the index holds {index.ntotal} vectors, the embedding files {spec.rows}")
    index_path, info_path = part.param("outputs")
    knn.write_index(index, fsio.join(out, index_path))
    space = part.param("space")
    info = {
        **spec.to_json(),
        "space": space,
        "modality": part.param("modality"),
        "subsets": list(part.param("subsets")),
        "clip": clip_config(wf, space).model_dump(mode="json"),
        "index": index_path,
        "build_seconds": round(time.time() - t0, 3),
        "files": [dict(zip(("subset", "shard", "metadata", "img_emb", "text_emb", "rows"), f)) for f in part.param("files")],
    }
    fsio.write_json_atomic(fsio.join(out, info_path), info)
    outcome = Outcome(outputs=[index_path, info_path])
    outcome.counts[f"{part.param('modality')}_vectors"] = int(index.ntotal)
    return outcome

"""Where shards live in a run directory, and reading a shard's samples in key order.

Stages write one file set per shard; this module is the one place that spells their paths, so
the stage that writes a shard and the stages that read it (and the training loader reading
`dataset/`) cannot disagree. Paths are relative to the run directory (`fsio.join(out, rel)`).

    unique/{subset}/part-NNNNN.parquet                 dedup's parts (one download shard each)
    images/{subset}/NNNNN.tar, .parquet, _stats.json   download, img2dataset's layout
    scores/{subset}/NNNNN.parquet (+ embeddings/)      score
    dataset/{name}/NNNNN.tar, .parquet                 select, one folder per recipe
"""
from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator

from . import fsio
from .runner import DonePartition, current, read_plan
from .schema import IMAGE_EXTS, STAGE_DIRS

_UNIQUE = STAGE_DIRS["dedup"]
_IMAGES = STAGE_DIRS["download"]
_SCORES = STAGE_DIRS["score"]
_DATASET = STAGE_DIRS["select"]
_PART = re.compile(r"^part-(\d+)\.parquet$")
_SHARD = re.compile(r"^(\d{5})\.(tar|parquet)$")


def shard_name(index: int) -> str:
    """A shard's file stem: its number, zero-padded to 5 digits as img2dataset names them."""
    return f"{index:05d}"


# --- paths ------------------------------------------------------------------------------------------


def unique_part(subset: str, index: int) -> str:
    return f"{_UNIQUE}/{subset}/part-{index:05d}.parquet"


def image_shard(subset: str, shard: str) -> dict[str, str]:
    """A download shard's files: `tar`, `parquet` (one row per input pair) and `stats`."""
    base = f"{_IMAGES}/{subset}/{shard}"
    return {"tar": f"{base}.tar", "parquet": f"{base}.parquet", "stats": f"{base}_stats.json"}


def score_shard(subset: str, shard: str) -> dict[str, str]:
    """A score shard's parquet, and its embeddings in clip-retrieval's layout (when saved)."""
    emb = f"{_SCORES}/{subset}/embeddings"
    return {
        "scores": f"{_SCORES}/{subset}/{shard}.parquet",
        "img_emb": f"{emb}/img_emb/img_emb_{shard}.npy",
        "text_emb": f"{emb}/text_emb/text_emb_{shard}.npy",
        "metadata": f"{emb}/metadata/metadata_{shard}.parquet",
    }


def dataset_dir(name: str) -> str:
    """The folder of recipe `name`'s shards (and its `_recipe.json`)."""
    return f"{_DATASET}/{name}"


def dataset_shard(name: str, index: int) -> dict[str, str]:
    """An output shard of recipe `name`: the WebDataset `tar` and its metadata `parquet`."""
    base = f"{dataset_dir(name)}/{shard_name(index)}"
    return {"tar": base + ".tar", "parquet": base + ".parquet"}


# --- listing ----------------------------------------------------------------------------------------
# What a stage reads of its upstream is that stage's current plan (`runner.current`), never a
# folder listing: a file an older plan left behind (or anything else lying in the folder) is not
# an input. Each entry carries its `DonePartition`, whose `ref` goes into the reader's `upstream`.


def _outputs(out: str, stage: str, folder: str, pattern: re.Pattern) -> list[tuple[str, re.Match, str, DonePartition]]:
    """(subset or recipe folder, file-name match, full path, partition) of the current outputs of
    `stage` under `folder/{name}/` whose file name matches `pattern`, in plan order."""
    found = []
    for done in current(out, stage):
        for rel in done.outputs:
            top, _, rest = rel.partition("/")
            name, _, base = rest.rpartition("/")
            m = pattern.match(base)
            if top == folder and m and "/" not in name:
                found.append((name, m, fsio.join(out, rel), done))
    return found


def unique_parts(out: str) -> list[tuple[str, int, str, DonePartition]]:
    """(subset, part index, path, dedup partition) of every current dedup part."""
    return [(sub, int(m.group(1)), path, d) for sub, m, path, d in _outputs(out, "dedup", _UNIQUE, _PART)]


def image_shards(out: str, subset: str) -> list[tuple[str, DonePartition]]:
    """(name, download partition) of the current download shards of `subset` that have a tar, in order."""
    return sorted((m.group(1), d) for sub, m, _, d in _outputs(out, "download", _IMAGES, _SHARD)
                  if sub == subset and m.group(2) == "tar")  # fmt: skip


def score_shards(out: str, subset: str) -> list[tuple[str, DonePartition]]:
    """(name, score partition) of the current scored shards of `subset`, in order."""
    return sorted((m.group(1), d) for sub, m, _, d in _outputs(out, "score", _SCORES, _SHARD)
                  if sub == subset and m.group(2) == "parquet")  # fmt: skip


def dataset_files(out: str, name: str) -> list[tuple[int, str]]:
    """(index, path) of every numbered tar or parquet file of recipe `name`'s current select
    partitions, in path order."""
    return sorted((int(m.group(1)), path) for rec, m, path, _ in _outputs(out, "select", _DATASET, _SHARD) if rec == name)


def current_dataset_parquets(out: str) -> dict[str, list[str]] | None:
    """Recipe name -> the parquet files of its current select partitions, in shard order; None
    when the select stage has no plan in `out` (a dataset folder copied without its state)."""
    if read_plan(out, "select") is None:
        return None
    found: dict[str, list[str]] = {}
    for rec, m, path, _ in _outputs(out, "select", _DATASET, _SHARD):
        if m.group(2) == "parquet":
            found.setdefault(rec, []).append(path)
    return {k: sorted(v) for k, v in found.items()}


def dataset_tars(out: str, name: str) -> list[str]:
    """The WebDataset tars of recipe `name`, in shard order (what a training loader reads)."""
    return [p for _, p in dataset_files(out, name) if p.endswith(".tar")]


# --- reading ----------------------------------------------------------------------------------------


def split_name(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the name up to the first dot of its last path part."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext


def image_member(sample: dict) -> tuple[str, bytes] | None:
    """(extension, bytes) of a sample's image member, or None when it has none."""
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    return None if ext is None else (ext, sample[ext])


def iter_tar_samples(tar_path: str) -> Iterator[dict]:
    """Samples of a WebDataset / img2dataset tar (dicts of extension -> bytes, plus `__key__` and
    `__url__`), in key order.

    Downloads finish, and so are written to the tar, in network order. Reading the tar's index
    (headers only) and then the members in key order makes every later result independent of
    it: batches hold the same images whatever order the tar has, so scores are the same to the
    last bit on a rerun or after a lost worker. Only one sample is in memory at a time. A
    truncated or corrupt tar yields every complete sample, then raises."""
    fs, p = fsio.fs_and_path(tar_path)
    with fs.open(p, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        samples: list[tuple[str, list[tarfile.TarInfo]]] = []
        current: dict[str, list] = {}
        problem: Exception | None = None
        try:
            with tarfile.open(fileobj=f, mode="r:") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    key, ext = split_name(m.name)
                    if m.offset_data + m.size > size:
                        problem = tarfile.ReadError(f"{m.name}: member cut off at byte {size}")
                        break
                    group = current.get(key)
                    if group is None or ext in {split_name(x.name)[1] for x in group}:
                        group = current[key] = []  # a new sample (a repeated key stays a second sample)
                        samples.append((key, group))
                    group.append(m)
        except (tarfile.TarError, EOFError, OSError) as e:
            problem = e
        for key, members in sorted(samples, key=lambda kv: kv[0]):
            sample: dict = {"__key__": key, "__url__": tar_path}
            for m in members:
                f.seek(m.offset_data)
                sample[split_name(m.name)[1]] = f.read(m.size)
            yield sample
        if problem is not None:
            raise problem

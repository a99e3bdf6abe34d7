"""Checks that a training run can start, made before any work (a `TrainInputError` is exit 2).

What fails here would otherwise fail minutes in (after models load) or, worse, train on nothing:
a run directory training cannot write to, a missing or empty dataset, fewer shards than readers,
a resolution no stored image reaches, a model path or config file that does not exist, fp16
without a GPU, a multi-node job started on one machine.

Stored image sizes are read from the image headers of the first shard of each source (a few
dozen headers; the download stage gives every image of a run the same size policy), and the
parquet's WIDTH / HEIGHT (original sizes) bound them from above.
"""
from __future__ import annotations

import re
from pathlib import Path

import pyarrow.parquet as pq

from .. import fsio
from ..config import ConfigError

PEEK_IMAGES = 32
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class TrainInputError(ConfigError):
    """The training run cannot start: the message says why and what to change."""


def _is_local(out: str) -> bool:
    return "://" not in out or out.startswith("file://")


def _count_rows(shards: list[str]) -> int | None:
    """Rows of the parquets beside the shards (None when a shard has no parquet)."""
    total = 0
    for s in shards:
        p = s[: -len(".tar")] + ".parquet"
        if s.startswith(("http://", "https://")) or not fsio.exists(p):
            return None
        fs, path = fsio.fs_and_path(p)
        with fs.open(path, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def _max_original_side(shards: list[str]) -> int | None:
    best = None
    for s in shards:
        p = s[: -len(".tar")] + ".parquet"
        if s.startswith(("http://", "https://")) or not fsio.exists(p):
            return None
        fs, path = fsio.fs_and_path(p)
        with fs.open(path, "rb") as f:
            # Two columns through ParquetFile on this thread, not pq.read_table: its dataset
            # scanner leaves Arrow threads that can abort the interpreter at exit
            # ("terminate called without an active exception", apache/arrow#34314), which
            # turned a usage error's exit 2 into a SIGABRT once on a loaded machine.
            pf = pq.ParquetFile(f)
            cols = set(pf.schema_arrow.names)
            w, h = ("original_width", "original_height") if "original_width" in cols else ("WIDTH", "HEIGHT")
            if w not in cols or h not in cols:
                return None
            t = pf.read(columns=[w, h], use_threads=False)
        for a, b in zip(t.column(w).to_pylist(), t.column(h).to_pylist()):
            if a and b:
                best = max(best or 0, min(int(a), int(b)))
    return best


def _stored_sides(shard: str, n: int = PEEK_IMAGES) -> list[int]:
    """Short sides of the first `n` images stored in a shard (headers only)."""
    from .loader_images import IMAGE_EXTS, open_image
    from .loader_sources import tar_samples

    sides = []
    for s in tar_samples([shard], lambda e: True):
        data = next((s[e] for e in IMAGE_EXTS if e in s), None)
        if data is None:
            continue
        try:
            im = open_image(data)
            sides.append(min(im.size))
        except Exception:  # noqa: BLE001 - an undecodable sample is the loader's counted skip
            continue
        if len(sides) >= n:
            break
    return sides


def _check_path(key: str, value: str | None, what: str) -> None:
    if value and not Path(value).exists():
        raise TrainInputError(f"{key}: {what} {value} does not exist")


def _check_model(wf) -> None:
    cfg = wf.train
    _check_path("train.unet_config", cfg.unet_config, "UNet config file")
    if cfg.model == "sd":
        src = cfg.pretrained or ""
        local = Path(src)
        if local.exists():
            missing = [p for p in SD_PARTS if not (local / p).is_dir()]
            if missing:
                raise TrainInputError(
                    f"train.pretrained: {src} is not a Stable Diffusion pipeline folder (missing {', '.join(missing)}/)")
        elif not _HUB_ID.match(src):
            raise TrainInputError(f"train.pretrained: {src} does not exist (a pipeline folder, or a hub id such as "
                                  "stable-diffusion-v1-5/stable-diffusion-v1-5)")
    else:
        clip = cfg.text_encoder or wf.models.clip_en
        if clip.model.endswith(".json"):
            _check_path("train.text_encoder.model" if cfg.text_encoder else "models.clip_en.model", clip.model, "CLIP model config")
        if clip.pretrained and (clip.pretrained.endswith((".safetensors", ".pt", ".pth", ".bin")) or "/" in clip.pretrained) \
                and "://" not in clip.pretrained:
            _check_path("train.text_encoder.pretrained" if cfg.text_encoder else "models.clip_en.pretrained",
                        clip.pretrained, "CLIP weights")


def _check_device(wf) -> None:
    import torch

    cfg = wf.train
    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if cfg.mixed_precision == "fp16" and not cuda:
        raise TrainInputError("train.mixed_precision: fp16 needs a CUDA GPU; on the CPU use bf16 or no")
    if cfg.launch.nodes > 1:
        raise TrainInputError(
            f"train.launch.nodes: {cfg.launch.nodes} nodes cannot be started from this machine: submit the job script "
            "that `laion-pipe run WORKFLOW --stages train --dry-run` prints (train.launch.job: slurm or pbs)")


def check_data(wf, out: str) -> dict[str, list[str]]:
    """The shards of each source, checked: they exist, hold samples, reach the resolution and
    are enough for every rank's every loader worker. Returns {source: shards}."""
    from .feed import loader_spec
    from .loader import make_pipeline
    from .loader_sources import resolve_source

    cfg = wf.train
    shards: dict[str, list[str]] = {}
    for src in cfg.sources:
        try:
            found = resolve_source(src, out)
        except ValueError as e:
            raise TrainInputError(f"train.sources: {e} (did the select stage run? `laion-pipe status {out}`)") from None
        rows = _count_rows(found)
        if rows == 0:
            raise TrainInputError(f"train.sources: {src!r} is empty: its {len(found)} shard(s) hold no sample")
        shards[src] = found
    res = cfg.resolution
    best_original = [m for m in (_max_original_side(s) for s in shards.values()) if m is not None]
    if best_original and len(best_original) == len(shards) and max(best_original) < res:
        raise TrainInputError(
            f"train.resolution: {res} px is above every image's original size (the largest short side is "
            f"{max(best_original)} px); lower train.resolution or curate larger images")
    stored = [side for s in shards.values() for side in _stored_sides(s[0])]
    if stored and max(stored) < res:
        raise TrainInputError(
            f"train.resolution: {res} px is above every stored image's size (short sides up to {max(stored)} px in the "
            f"first shard of each source): raise download.image_size (and keep resize_only_if_bigger) or lower "
            "train.resolution")
    try:
        make_pipeline(loader_spec(wf, out), world_size=cfg.launch.world_size)
    except ValueError as e:
        raise TrainInputError(f"train: {e}") from None
    return shards


def check_setup(wf, out: str) -> None:
    """The checks that need no data: where the run is, the device, the model's files. A whole
    `laion-pipe run` that ends with training can make them before its first stage."""
    if not _is_local(out):
        raise TrainInputError(f"out: training writes its checkpoints with local file operations; {out} is not a local "
                              "(or mounted shared) directory")
    _check_device(wf)
    _check_model(wf)


def preflight(wf, out: str) -> dict[str, list[str]]:
    """Every check, cheapest first; returns the sources' shards."""
    check_setup(wf, out)
    return check_data(wf, out)

"""Evaluation prompts and the held-out real images they belong to.

Prompts come from the samples a training run set aside and never trained on
(`RUN/train/{name}/holdout.json`, written by the train stage with `loader.is_holdout`), or from a
text file. The real held-out images, which FD-CLIP compares generated images with, are read back
through the training loader itself with `holdout="only"`: the same decoding, resizing and
centre crop the model's training images went through, so the comparison is with what the model
was shown, at its resolution.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .. import fsio
from ..config import ConfigError

HOLDOUT_FILE = "holdout.json"


@dataclass(frozen=True)
class Holdout:
    """What a training run set aside: (shard, key, caption) of each held-out sample, in shard then
    key order (two dataset folders may use the same keys, so a key alone does not name a sample)."""

    name: str
    fraction: float
    items: tuple[tuple[str, str, str], ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for _, k, _ in self.items)

    @property
    def captions(self) -> list[str]:
        return [c for _, _, c in self.items]

    @property
    def sources(self) -> tuple[str, ...]:
        """The shards the held-out samples are in ("" when the file did not record them)."""
        return tuple(sorted({s for s, _, _ in self.items if s}))


def holdout_path(out: str, name: str) -> str:
    return fsio.join(out, "train", name, HOLDOUT_FILE)


def _items(data: dict) -> list[tuple[str, str, str]]:
    """holdout.json's samples: its `items` (with their shard) when present, else `keys` + `captions`."""
    if data.get("items"):
        return [(str(it.get("shard") or ""), str(it["key"]), str(it.get("caption") or "")) for it in data["items"]]
    captions = {str(k): str(v or "") for k, v in dict(data.get("captions") or {}).items()}
    keys = [str(k) for k in data.get("keys") or []] or list(captions)
    return [("", k, captions.get(k, "")) for k in keys]


def read_holdout(out: str, name: str) -> Holdout:
    """`RUN/train/{name}/holdout.json`; a ConfigError when the run has none or it holds no prompts."""
    path = holdout_path(out, name)
    if not fsio.exists(path):
        raise ConfigError(
            f"evaluate: no held-out prompts: {path} does not exist (train {name!r} with train.holdout_fraction above 0, "
            "or give evaluate.prompts=FILE)"
        )
    try:
        data = fsio.read_json(path)
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        items = _items(data)
        fraction = float(data.get("fraction", 0.0))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ConfigError(f"evaluate: cannot read {path}: {e}") from None
    items = sorted({(s, k, c.strip()) for s, k, c in items if c.strip()})
    if not items:
        raise ConfigError(
            f"evaluate: no held-out prompts: {path} lists no held-out sample with a caption "
            "(raise train.holdout_fraction, or give evaluate.prompts=FILE)"
        )
    return Holdout(name=name, fraction=fraction, items=tuple(items))


def read_prompts_file(path: str) -> list[str]:
    """One prompt per line, surrounding blanks stripped, blank lines skipped; a ConfigError when the
    file is missing or holds no prompt."""
    if not fsio.exists(path):
        raise ConfigError(f"evaluate.prompts: file not found: {path}")
    fs, p = fsio.fs_and_path(path)
    try:
        with fs.open(p, "rb") as f:
            text = f.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"evaluate.prompts: {path} is not UTF-8 text ({e})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"evaluate.prompts: {path} holds no prompt (one per line expected)")
    return prompts


def holdout_prompts(holdout: Holdout, n: int) -> list[str]:
    """The captions of the first `n` held-out samples in (shard, key) order: deterministic, and the
    same for every model evaluated against this holdout."""
    return holdout.captions[:n]


def expand(prompts: Sequence[str], images_per_prompt: int, seed: int) -> tuple[list[str], list[int]]:
    """One (prompt, seed) per image: image k of prompt i gets seed + i * images_per_prompt + k, so
    every image has its own seed and adding prompts never changes the earlier images."""
    per_image = [p for p in prompts for _ in range(images_per_prompt)]
    seeds = [seed + i for i in range(len(per_image))]
    return per_image, seeds


def to_pil(pixel_values) -> list[Image.Image]:
    """Loader batches ([B, 3, R, R] floats in [-1, 1]) back to RGB images."""
    arr = np.asarray(pixel_values, dtype=np.float32)
    arr = np.clip((arr + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return [Image.fromarray(a, "RGB") for a in arr]

"""The models one subset is scored with, assembled and cached per worker process.

`load_models(wf, subset)` builds a `ScoreModels` from the workflow's `models:` section: the
similarity CLIP of the subset (LAION-5B's split: `clip_en` for EN, `clip_multi` for MULTI and
NOLANG), the NSFW and aesthetic heads on the CLIPs their configs name, and the watermark
classifier. It is loaded once per worker process per (configuration, device) and kept: loading a
CLIP takes longer than scoring a shard on a GPU. The score stage calls it; so can any stage that
needs the same models (evaluation's CLIP score).

`model_identity(wf, subset)` is what about the models changes a score: the score stage's
fingerprint input.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import fsio
from ..runner import fingerprint


def clip_config_for(wf: Any, subset: str):
    """LAION-5B's split: the English CLIP for EN, the multilingual one for MULTI and NOLANG."""
    return wf.models.clip_en if subset == "en" else wf.models.clip_multi


def _head_configs(wf: Any) -> dict[str, Any]:
    """The configured heads; one left out (None) gives NaN in its column."""
    return {name: getattr(wf.models, name, None) for name in ("nsfw", "watermark", "aesthetic")}


def _drop_unset_pins(obj: Any) -> Any:
    """A config dump without `sha256: null` entries, so configurations written before pins existed
    keep their fingerprint."""
    if isinstance(obj, dict):
        return {k: _drop_unset_pins(v) for k, v in obj.items() if not (k == "sha256" and v is None)}
    return obj


def _dump(cfg: Any) -> Any:
    return None if cfg is None else _drop_unset_pins(cfg.model_dump(mode="json"))


def _architectures(wf: Any, subset: str) -> list[str]:
    """How each CLIP named by an open_clip tag is built (QuickGELU or not): the rule changed
    (issue 18: OpenAI's weights now always get QuickGELU), so scores computed before it rerun.
    A model/tag pair that cannot be built right is a configuration error here, before any work.
    A custom model-config JSON with a weights file (the demo's CLIP) has no tag: its file is
    checked without importing open_clip, which would cost every `run`/`score` command's driver
    seconds."""
    from ..config import ConfigError
    from .clip import _is_config_path, _is_tag, clip_source, read_model_config

    heads = _head_configs(wf)
    cfgs = [clip_config_for(wf, subset)] + [getattr(heads[h], "clip", None) for h in ("nsfw", "aesthetic")]
    out = []
    for cfg in cfgs:
        if cfg is None:
            continue
        try:
            if _is_config_path(cfg.model) and not (cfg.pretrained and _is_tag(cfg.pretrained)):
                read_model_config(cfg.model)
                continue
            src = clip_source(cfg)
        except ValueError as e:
            raise ConfigError(f"models: {e}") from None
        if src.tag:
            out.append(f"{src.name}+{src.tag}:quick_gelu={src.quick_gelu}")
    return out


def _weights_identity(obj: Any) -> list[str]:
    """Fingerprints of local weight files a config names, so replacing a file in place reruns."""
    found: list[str] = []
    if isinstance(obj, dict):
        for v in obj.values():
            found += _weights_identity(v)
    elif isinstance(obj, str) and os.path.isfile(obj):
        found.append(f"{obj}={fsio.fingerprint_of(obj)}")
    return found


def model_identity(wf: Any, subset: str) -> dict:
    """Everything about the models that changes a score of `subset` (the fingerprint input).
    Device, precision and batch size are left out: they change scores by rounding at most."""
    ident = {"clip": _dump(clip_config_for(wf, subset)), **{k: _dump(v) for k, v in _head_configs(wf).items()}}
    ident["files"] = _weights_identity(ident)
    arch = _architectures(wf, subset)
    if arch:
        ident["architectures"] = arch
    return ident


@dataclass
class ScoreModels:
    """The models one subset is scored with, on one device.

    `clips[0]` is the similarity CLIP; the NSFW and aesthetic heads read the image embedding of
    the CLIP their own config names (LAION-5B: ViT-L/14 for both, ViT-B/32 for similarity), which
    is `clips[nsfw_clip]` / `clips[aesthetic_clip]`: a CLIP named twice is run once per image."""

    clips: list[Any]
    nsfw: Any | None = None
    nsfw_clip: int = 0
    aesthetic: Any | None = None
    aesthetic_clip: int = 0
    watermark: Any | None = None
    device: str = "cpu"

    def preprocessors(self) -> list[Callable[[Image.Image], torch.Tensor]]:
        """What a decode thread applies to each image: one tensor per CLIP, then the watermark's."""
        pre = [c.preprocess for c in self.clips]
        if self.watermark is not None:
            pre.append(self.watermark.preprocess)
        return pre

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A stacked batch onto the model's device (pinned by the collator on CUDA, so the copy
        is asynchronous)."""
        if self.device.startswith("cuda"):
            return x.to(self.device, non_blocking=True)
        return x

    def encode_texts(self, texts: list[str], batch_size: int) -> torch.Tensor:
        return self.clips[0].encode_texts(texts, batch_size=batch_size)

    def score_images(self, stacked: list[torch.Tensor], text_emb: torch.Tensor) -> dict[str, Any]:
        """One batch (one stacked tensor per preprocessor): image embeddings, their cosine with
        their captions' embeddings, the heads."""
        n = len(stacked[0])
        with torch.no_grad():
            embs = [clip.encode_images(self.to_device(stacked[i])) for i, clip in enumerate(self.clips)]
            out: dict[str, Any] = {
                "embedding": embs[0],
                "similarity": np.asarray(self.clips[0].similarity(embs[0], text_emb), dtype=np.float32),
                "punsafe": _head(self.nsfw, embs[self.nsfw_clip], n),
                "aesthetic": _head(self.aesthetic, embs[self.aesthetic_clip], n),
                "pwatermark": np.full(n, np.nan, np.float32),
            }
            if self.watermark is not None:
                wm = self.to_device(stacked[len(self.clips)])
                out["pwatermark"] = np.asarray(_cpu(self.watermark.score(wm)), dtype=np.float32).reshape(n)
        return out


def _cpu(x: Any) -> Any:
    return x.float().cpu().numpy() if isinstance(x, torch.Tensor) else x


def _head(head: Any | None, emb: torch.Tensor, n: int) -> np.ndarray:
    if head is None:
        return np.full(n, np.nan, np.float32)
    return np.asarray(_cpu(head.score(emb)), dtype=np.float32).reshape(n)


_MODELS: dict[str, ScoreModels] = {}
_MODELS_LOCK = threading.Lock()


def load_models(wf: Any, subset: str, device: str | None = None) -> ScoreModels:
    """The models for `subset`, loaded once per worker process per (configuration, device):
    loading a CLIP takes longer than scoring a shard on a GPU."""
    from ..models.aesthetic import load_aesthetic
    from ..models.clip import cached_clip
    from ..models.devices import resolve_device
    from ..models.nsfw import load_nsfw
    from ..models.watermark import load_watermark

    device = resolve_device(device or wf.score.device)
    precision = None if wf.score.precision == "auto" else wf.score.precision
    cache = getattr(wf.models, "cache_dir", None)
    heads = _head_configs(wf)
    cache_key = fingerprint(_dump(clip_config_for(wf, subset)), {k: _dump(v) for k, v in heads.items()}, device, precision, cache)
    with _MODELS_LOCK:  # two tasks on one worker must not load the same models twice
        if cache_key in _MODELS:
            return _MODELS[cache_key]
        clip_cfgs = [clip_config_for(wf, subset)]

        def clip_index(cfg: Any) -> int:
            for i, c in enumerate(clip_cfgs):
                if _dump(c) == _dump(cfg):
                    return i
            clip_cfgs.append(cfg)
            return len(clip_cfgs) - 1

        m = ScoreModels(clips=[], device=device)
        if heads["nsfw"] is not None:
            m.nsfw_clip = clip_index(heads["nsfw"].clip)
        if heads["aesthetic"] is not None:
            m.aesthetic_clip = clip_index(heads["aesthetic"].clip)
        m.clips = [cached_clip(c, device, precision, cache) for c in clip_cfgs]
        if heads["nsfw"] is not None:
            m.nsfw = load_nsfw(heads["nsfw"], m.clips[m.nsfw_clip], cache)
        if heads["aesthetic"] is not None:
            m.aesthetic = load_aesthetic(heads["aesthetic"], m.clips[m.aesthetic_clip], cache)
        if heads["watermark"] is not None:
            m.watermark = load_watermark(heads["watermark"], device, cache=cache)
        _MODELS[cache_key] = m
        return m

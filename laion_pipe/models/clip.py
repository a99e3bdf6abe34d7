"""CLIP through open_clip, from configuration: the image-text similarity LAION filtered on.

One loader for every source open_clip knows (a built-in name with a pretrained tag or a weights
file, `hf-hub:`, `local-dir:`) plus a custom model-config JSON, which is how the shipped demo CLIP
loads: the demo and the real LAION-5B models go through the same code path.

Embeddings come back L2-normalised in float32 on the CPU whatever the device and precision, so the
similarity of an image and its caption is a plain dot product and the numbers written to parquet
do not depend on where they were computed (beyond fp16 rounding on GPUs).
"""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config.models import ClipModelConfig
from .devices import default_precision, torch_dtype
from .weights import cache_dir, is_url, local_weights

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")
_register_lock = threading.Lock()
_PREPROCESS_KEYS = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation",
                    "resize_mode": "image_resize_mode"}
HF_ENDPOINT = "https://huggingface.co"
# What a Hugging Face text tower needs besides its weights (which come with the CLIP checkpoint):
# its config and tokenizer files. Missing optional ones are skipped when fetching.
HF_TEXT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "sentencepiece.bpe.model", "spiece.model", "vocab.json", "merges.txt", "vocab.txt")


def read_model_config(path: str) -> tuple[Path, dict]:
    """A custom open_clip model-config JSON, checked (readable, the flat layout, the keys
    open_clip needs) without importing open_clip: (resolved path, config)."""
    p = Path(path).expanduser().resolve()
    try:
        cfg = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"CLIP model config {p}: cannot read JSON ({e})") from e
    if "model_cfg" in cfg:
        raise ValueError(
            f"{p} is an open_clip_config.json (hub layout): use model: 'local-dir:{p.parent}' instead"
        )
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ValueError(f"CLIP model config {p}: missing keys {missing}")
    return p, cfg


def _register_model_config(path: str) -> str:
    """Register a custom open_clip model-config JSON and return the name open_clip knows it by
    (the file's stem, open_clip's own convention for its config folder)."""
    p, cfg = read_model_config(path)
    import open_clip

    with _register_lock:
        if open_clip.get_model_config(p.stem) != cfg:
            open_clip.add_model_config(p)
    return p.stem


def _is_config_path(model: str) -> bool:
    return model.endswith(".json") or (os.sep in model and Path(model).is_file())


def _is_tag(pretrained: str) -> bool:
    """A pretrained value that is neither a path nor a URL: an open_clip tag."""
    return not (
        is_url(pretrained) or pretrained.startswith("file://") or pretrained.endswith(_WEIGHT_SUFFIXES)
        or os.sep in pretrained or os.path.exists(pretrained)
    )


@dataclass(frozen=True)
class ClipSource:
    """What building one configured CLIP takes: the open_clip name to build, the checkpoint
    (location and its sha256 when known), the architecture and preprocessing the weights were
    trained with, and the Hugging Face repos its text tower reads its config and tokenizer from."""

    name: str
    weights: str | None = None
    sha256: str | None = None
    quick_gelu: bool = False
    preprocess: tuple = ()  # ((open_clip kwarg, value), ...) from the pretrained tag
    hf_repos: tuple[str, ...] = ()
    tag: str | None = None


def tag_weights_url(tag_cfg: dict) -> tuple[str, str | None]:
    """The download URL of a pretrained tag and its sha256 when the URL carries it. OpenAI's own
    URL (its path holds the file's sha256) is preferred over a Hub copy; otherwise the Hub file
    open_clip itself would load."""
    url = tag_cfg.get("url") or ""
    if url:
        parts = url.split("/")
        pinned = parts[-2] if "openaipublic" in url and len(parts[-2]) == 64 else None
        return url, pinned
    hub = tag_cfg.get("hf_hub") or ""
    if not hub:
        raise ValueError("pretrained tag has neither a URL nor a Hugging Face file")
    repo, filename = os.path.split(hub)  # open_clip's convention: 'org/repo/' = its default file
    return f"{hf_endpoint()}/{repo}/resolve/main/{filename or 'open_clip_pytorch_model.bin'}", None


def hf_endpoint() -> str:
    """The Hugging Face Hub's address ($HF_ENDPOINT for a mirror, as huggingface_hub reads it)."""
    return os.environ.get("HF_ENDPOINT", HF_ENDPOINT).rstrip("/")


def clip_source(cfg: ClipModelConfig) -> ClipSource:
    """Resolve a ClipModelConfig to what must be built and downloaded (no download happens).

    An open_clip tag is resolved against open_clip's registry: its weights URL, its preprocessing,
    and whether it was trained with QuickGELU, which is forced whatever the model name says
    (open_clip >= 2.29 would build `ViT-B-32` + `openai` with GELU and only warn). A `-quickgelu`
    model with a tag trained with GELU is refused, naming the model to use."""
    import open_clip

    model = cfg.model
    if model.startswith(("hf-hub:", "local-dir:")):
        return ClipSource(name=model)
    name = _register_model_config(model) if _is_config_path(model) else model
    text_cfg = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
    hf = tuple(sorted({text_cfg[k] for k in ("hf_model_name", "hf_tokenizer_name") if text_cfg.get(k)}))
    if open_clip.get_model_config(name) is None:
        raise ValueError(f"unknown open_clip model {name!r} (see open_clip.list_models())")
    pretrained = cfg.pretrained
    if not pretrained:
        return ClipSource(name=name, hf_repos=hf)
    if not _is_tag(pretrained):
        return ClipSource(name=name, weights=pretrained, sha256=cfg.sha256, hf_repos=hf)
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not tag_cfg:
        base = name.removesuffix("-quickgelu")
        if base != name and open_clip.get_pretrained_cfg(base, pretrained):
            raise ValueError(
                f"CLIP {name} with pretrained={pretrained!r}: those weights were trained with GELU, not QuickGELU; "
                f"use model: {base}"
            )
        known = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(f"CLIP {name}: unknown pretrained tag {pretrained!r} (open_clip knows {known})")
    url, pinned = tag_weights_url(tag_cfg)
    preprocess = tuple((kw, tag_cfg[k]) for k, kw in _PREPROCESS_KEYS.items() if k in tag_cfg)
    return ClipSource(
        name=name, weights=url, sha256=cfg.sha256 or pinned, quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
        preprocess=preprocess, hf_repos=hf, tag=pretrained,
    )


def hf_files_dir(repo: str, cache: str | os.PathLike | None = None) -> Path:
    """Where `models fetch` puts a Hugging Face repo's config and tokenizer files."""
    return cache_dir(cache) / "hf" / repo.replace("/", "--")


def _is_torchscript(path: str) -> bool:
    """OpenAI's CLIP files are TorchScript archives, which torch.load(weights_only=True) refuses."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def state_dict_file(path: str) -> str:
    """A checkpoint open_clip can load with weights_only=True: a TorchScript archive (OpenAI's
    files) is converted once into a safetensors file beside it (its state dict, as open_clip's
    own loader would take it); anything else is returned as it is."""
    if not _is_torchscript(path):
        return path
    out = Path(path).with_suffix(".state_dict.safetensors")
    if not out.is_file():
        from safetensors.torch import save_file

        from .. import fsio

        sd = torch.jit.load(path, map_location="cpu").state_dict()
        for key in ("input_resolution", "context_length", "vocab_size"):
            sd.pop(key, None)
        tmp = out.with_name(f"{fsio.TMP_PREFIX}{os.getpid()}-{out.name}")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp))
        os.replace(tmp, out)
    return str(out)


def _local_hf_config(name: str, hf_repos: tuple[str, ...], cache) -> str:
    """When `models fetch` stored the text tower's Hugging Face files, register a copy of the
    model config that reads them from the cache (so building the CLIP needs no internet)."""
    import open_clip

    local = {r: hf_files_dir(r, cache) for r in hf_repos}
    if not local or not all((d / "config.json").is_file() for d in local.values()):
        return name
    cfg = open_clip.get_model_config(name)
    for k in ("hf_model_name", "hf_tokenizer_name"):
        if cfg["text_cfg"].get(k) in local:
            cfg["text_cfg"][k] = str(local[cfg["text_cfg"][k]])
    path = cache_dir(cache) / "open_clip_configs" / f"{name}.cached.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or json.loads(path.read_text()) != cfg:
        from .. import fsio

        fsio.write_bytes_atomic(str(path), json.dumps(cfg, indent=1).encode())
    return _register_model_config(str(path))


@dataclass
class ClipScorer:
    """A loaded CLIP: its own preprocessing, normalised encoders, and the cosine LAION thresholds."""

    model: torch.nn.Module
    preprocess: Callable  # PIL.Image -> tensor [3, H, W]: the model's own eval transform
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    device: str = "cpu"
    precision: str = "fp32"
    name: str = ""
    _embed_dim: int | None = field(default=None, repr=False)

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self.precision)

    @property
    def embed_dim(self) -> int:
        if self._embed_dim is None:
            self._embed_dim = int(self.encode_texts([""]).shape[1])
        return self._embed_dim

    @torch.no_grad()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] preprocessed images -> [N, D] L2-normalised float32 (CPU)."""
        if batch.ndim == 3:
            batch = batch.unsqueeze(0)
        feats = self.model.encode_image(batch.to(self.device, dtype=self.dtype))
        return F.normalize(feats.float(), dim=-1).cpu()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Captions -> [N, D] L2-normalised float32 (CPU). Texts longer than the model's context
        are truncated by its tokenizer, as LAION's scoring did."""
        texts = list(texts)
        if not texts:
            return torch.empty((0, self.embed_dim), dtype=torch.float32)
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[i : i + batch_size]).to(self.device)
            out.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        return torch.cat(out)

    @staticmethod
    def similarity(image_emb, text_emb) -> np.ndarray:
        """Row-wise cosine similarity of paired normalised embeddings: LAION's `similarity`."""
        a = torch.as_tensor(image_emb, dtype=torch.float32)
        b = torch.as_tensor(text_emb, dtype=torch.float32)
        if a.shape != b.shape:
            raise ValueError(f"paired embeddings must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        return (a * b).sum(dim=-1).numpy()


def build_clip(src: ClipSource, checkpoint: str | None, device: str = "cpu", precision: str = "fp32",
               cache: str | os.PathLike | None = None):
    """open_clip's (model, eval transform) for `src`, with `checkpoint` (a local state-dict file)
    loaded: QuickGELU when the weights were trained with it, the tag's preprocessing."""
    import open_clip

    name = _local_hf_config(src.name, src.hf_repos, cache) if src.hf_repos else src.name
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=checkpoint, device=device, precision=precision, force_quick_gelu=src.quick_gelu,
        cache_dir=str(cache_dir(cache) / "open_clip"), **dict(src.preprocess),  # hf-hub: models download there
    )
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


def load_clip(
    cfg: ClipModelConfig, device: str = "cpu", precision: str | None = None, cache: str | os.PathLike | None = None
) -> ClipScorer:
    """Build a ClipScorer from configuration. `precision` defaults to fp16 on CUDA, fp32 elsewhere.
    Weights come from the model cache `cache` (models.cache_dir), downloaded there on first use."""
    precision = precision or default_precision(device)
    src = clip_source(cfg)
    checkpoint = state_dict_file(local_weights(src.weights, src.sha256, cache)) if src.weights else None
    model, preprocess, tokenizer = build_clip(src, checkpoint, device, precision, cache)
    return ClipScorer(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        device=str(device),
        precision=precision,
        name=src.name,
    )


_cache: dict[tuple, ClipScorer] = {}
_cache_lock = threading.Lock()


def cached_clip(
    cfg: ClipModelConfig, device: str = "cpu", precision: str | None = None, cache: str | os.PathLike | None = None
) -> ClipScorer:
    """`load_clip`, once per process and configuration: every score task on a Dask worker shares
    the loaded model instead of reading hundreds of MB of weights per partition."""
    key = (cfg.model, cfg.pretrained, cfg.sha256, str(device), precision or default_precision(device), str(cache))
    with _cache_lock:
        if key not in _cache:
            _cache[key] = load_clip(cfg, device, precision, cache)
        return _cache[key]

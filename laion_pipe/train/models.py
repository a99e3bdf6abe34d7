"""The two model families the training loop trains, as one set of parts.

The loop only ever sees a `Components`: a UNet to train, the noise scheduler that defines the
forward process, a tokenizer for the loader, and two frozen encoders (pixels -> the UNet's input
space, token ids -> the cross-attention states). What differs between the families is only how
those parts are built:

- `sd`: Stable Diffusion v1 loaded by diffusers / transformers `from_pretrained` from a pipeline
  directory or hub id. Pixels go through the VAE (latents times its `scaling_factor`), captions
  through the CLIP text encoder's last hidden states; both stay frozen, as in diffusers'
  `train_text_to_image.py`.
- `demo`: a 1.4M-parameter pixel-space `UNet2DConditionModel` (block channels 32/64/64,
  cross-attention at the lowest level only) built from a config, conditioned on the run's scoring
  CLIP's pooled text embedding (one token of the CLIP's embedding width). Pixels are the UNet's
  input as they are.

`model_info` is what a saved model folder records in `laion_pipe_model.json`, so
`sampling.load_generator` can rebuild the same parts from `final/` or any `checkpoint-N/`.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

MODEL_INFO = "laion_pipe_model.json"
"""The file in final/ and checkpoint-N/ that says which family and parts a saved model has."""

DEMO_UNET: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 1,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}
"""The demo UNet (cross_attention_dim is the text encoder's width): about 1.4M parameters, about
2 training steps/s at batch 32 and 32 px on an idle 2-core CPU."""

DEMO_SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "epsilon"}
"""The demo's forward process: the cosine schedule suits small pixel-space images (the linear
schedule of latent SD leaves too little signal at 32 px)."""


@dataclass
class Components:
    """What the loop needs, whatever the family."""

    family: str
    unet: torch.nn.Module
    noise_scheduler: Any  # a diffusers scheduler with add_noise / get_velocity (DDPMScheduler)
    tokenize: Callable[[list[str]], torch.Tensor]
    text_encoder: torch.nn.Module
    vae: torch.nn.Module | None  # None: the UNet works on pixels
    info: dict = field(default_factory=dict)
    tokenizer: Any = None  # sd: the transformers tokenizer (saved into final/)

    @property
    def frozen(self) -> list[torch.nn.Module]:
        return [m for m in (self.text_encoder, self.vae) if m is not None]

    def encode_pixels(self, pixel_values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, 3, R, R] in [-1, 1] -> what the UNet denoises (SD: scaled VAE latents)."""
        if self.vae is None:
            return pixel_values
        dist = self.vae.encode(pixel_values).latent_dist
        return dist.sample(generator=generator) * self.vae.config.scaling_factor

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """token ids -> encoder_hidden_states [B, T, D]."""
        if self.family == "demo":
            return demo_text_states(self.text_encoder, input_ids)
        return self.text_encoder(input_ids, return_dict=False)[0]


class HFTokenize:
    """A transformers tokenizer as the loader's `tokenize` (a class, not a lambda, so it pickles
    into DataLoader workers under any start method)."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, captions: list[str]) -> torch.Tensor:
        return self.tokenizer(
            captions, max_length=self.max_length, padding="max_length", truncation=True, return_tensors="pt"
        ).input_ids


def demo_text_states(clip_model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The demo conditioning: the CLIP's pooled, L2-normalised text embedding as one token,
    scaled to unit variance per channel so the UNet's attention sees inputs of the usual size."""
    emb = clip_model.encode_text(input_ids)
    emb = F.normalize(emb.float(), dim=-1) * math.sqrt(emb.shape[-1])
    return emb.unsqueeze(1)


def _demo_clip_ref(cfg_model: str, cfg_pretrained: str | None) -> dict:
    """The CLIP's model/pretrained as a saved model folder records them: files among the shipped
    demo weights as `demo:NAME` (the folder then loads wherever the package is installed)."""
    from importlib import resources

    root = Path(str(resources.files("laion_pipe.models.demo") / "weights")).resolve()

    def portable(v: str | None) -> str | None:
        if v and Path(v).is_file() and Path(v).resolve().parent == root:
            return f"demo:{Path(v).name}"
        return v

    return {"model": portable(cfg_model), "pretrained": portable(cfg_pretrained)}


def clip_config_from_ref(ref: dict):
    """A ClipModelConfig from a recorded reference (resolving `demo:` names)."""
    from ..config import resolve_demo_paths
    from ..config.models import ClipModelConfig

    return ClipModelConfig(**resolve_demo_paths(dict(ref)))


def load_demo_text_encoder(ref: dict, device: str = "cpu"):
    """(clip model, open_clip tokenizer) of a demo model's text tower, frozen, in eval mode."""
    from ..models.clip import load_clip

    scorer = load_clip(clip_config_from_ref(ref), device=device, precision="fp32")
    model = scorer.model
    model.requires_grad_(False)
    model.eval()
    return model, scorer.tokenizer


def read_unet_config(path: str) -> dict:
    p = Path(path)
    try:
        cfg = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"unet_config {p}: cannot read a JSON config ({e})") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"unet_config {p}: expected a JSON object")
    return cfg


def demo_unet_config(text_width: int, unet_config: str | None = None) -> dict:
    cfg = dict(read_unet_config(unet_config) if unet_config else DEMO_UNET)
    cfg["cross_attention_dim"] = text_width
    return cfg


def build_demo(train_cfg, clip_cfg) -> Components:
    """The demo family: a fresh UNet from `DEMO_UNET` (or `unet_config`) on the CLIP's text."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    ref = _demo_clip_ref(clip_cfg.model, clip_cfg.pretrained)
    clip_model, tokenizer = load_demo_text_encoder(ref)
    with torch.no_grad():
        width = int(clip_model.encode_text(tokenizer([""])).shape[-1])
    unet = UNet2DConditionModel.from_config(demo_unet_config(width, train_cfg.unet_config))
    scheduler = DDPMScheduler.from_config(DEMO_SCHEDULER)
    info = {"family": "demo", "resolution": train_cfg.resolution, "text_encoder": ref}
    return Components("demo", unet, scheduler, tokenizer, clip_model, None, info)


def build_sd(train_cfg) -> Components:
    """The SD v1 family from a pipeline directory or hub id (diffusers' own loading path)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    src = train_cfg.pretrained
    tokenizer = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(src, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(src, subfolder="vae")
    if train_cfg.unet_config:
        unet = UNet2DConditionModel.from_config(read_unet_config(train_cfg.unet_config))
    else:
        unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet")
    scheduler = DDPMScheduler.from_pretrained(src, subfolder="scheduler")
    if train_cfg.prediction_type is not None:
        scheduler.register_to_config(prediction_type=train_cfg.prediction_type)
    text_encoder.requires_grad_(False)
    vae.requires_grad_(False)
    text_encoder.eval()
    vae.eval()
    max_len = min(int(tokenizer.model_max_length), int(text_encoder.config.max_position_embeddings))
    info = {"family": "sd", "resolution": train_cfg.resolution, "pretrained": src}
    return Components("sd", unet, scheduler, HFTokenize(tokenizer, max_len), text_encoder, vae, info, tokenizer)


def build_components(wf) -> Components:
    """The parts of the workflow's `train:` model, the UNet trainable, the rest frozen."""
    cfg = wf.train
    comps = build_sd(cfg) if cfg.model == "sd" else build_demo(cfg, cfg.text_encoder or wf.models.clip_en)
    if cfg.prediction_type is not None:
        comps.noise_scheduler.register_to_config(prediction_type=cfg.prediction_type)
    comps.info["prediction_type"] = comps.noise_scheduler.config.prediction_type
    comps.unet.train()
    return comps

"""The scoring models: CLIP similarity, punsafe, pwatermark and the aesthetic score.

    from laion_pipe.models.clip import load_clip            # ClipScorer
    from laion_pipe.models.nsfw import load_nsfw            # NsfwScorer (mlp head or zero-shot)
    from laion_pipe.models.watermark import load_watermark  # WatermarkScorer
    from laion_pipe.models.aesthetic import load_aesthetic  # AestheticScorer

Every loader takes its section of `ModelsConfig`; the defaults are LAION-5B's models (as LAION ran
them: QuickGELU for OpenAI's CLIPs, the NSFW detector from LAION's own Keras zip, read by
`keras_nsfw`), their files come through the model cache of `weights` (filled beforehand for
offline machines by `laion-pipe models fetch`, see `provision`), and
`demo_models_config()` points every section at the small demo weights shipped in
`models/demo/weights/` (trained by `python -m laion_pipe.models.demo.train`, see demo/README.md).
This module imports no torch, so configuration code can use it cheaply.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Literal

from ..config.models import (
    AestheticModelConfig,
    ClipModelConfig,
    ModelsConfig,
    NsfwModelConfig,
    WatermarkModelConfig,
)

__all__ = ["demo_weights_dir", "demo_models_config", "demo_zeroshot_prompts"]

DEMO_FILES = {
    "clip_config": "laion-pipe-demo-clip.json",
    "clip": "demo-clip.safetensors",
    "nsfw": "demo-nsfw-head.safetensors",
    "watermark": "demo-watermark.safetensors",
    "aesthetic": "demo-aesthetic.safetensors",
}
DEMO_WATERMARK_ARCH = "test_efficientnet"


def demo_weights_dir() -> Path:
    """The installed package's demo weights folder."""
    return Path(str(files("laion_pipe.models.demo") / "weights"))


def demo_zeroshot_prompts() -> tuple[list[str], list[str]]:
    """(safe, unsafe) prompts for the zero-shot punsafe method with the demo CLIP: each shape
    once in every colour (on a rotating background), the skull being the unsafe concept."""
    from .demo import synth

    colours = list(synth.COLOURS)

    def prompts(shape: str) -> list[str]:
        return [
            synth.caption_for(shape, c, colours[(i + 3) % len(colours)], "en") for i, c in enumerate(colours)
        ]

    safe = [p for s in synth.SAFE_SHAPES for p in prompts(s)]
    return safe, prompts(synth.UNSAFE_SHAPE)


def demo_models_config(
    nsfw_method: Literal["mlp", "zeroshot"] = "mlp", weights_dir: str | Path | None = None
) -> ModelsConfig:
    """`ModelsConfig` of the demo: one tiny CLIP for EN and MULTI (it was trained on en/de/fr/es
    captions) whose image embedding also feeds the NSFW and aesthetic heads, and the small
    watermark classifier. `weights_dir` defaults to the shipped weights."""
    w = Path(weights_dir) if weights_dir is not None else demo_weights_dir()
    clip = ClipModelConfig(model=str(w / DEMO_FILES["clip_config"]), pretrained=str(w / DEMO_FILES["clip"]))
    safe, unsafe = demo_zeroshot_prompts()
    return ModelsConfig(
        clip_en=clip,
        clip_multi=clip,
        nsfw=NsfwModelConfig(
            method=nsfw_method,
            clip=clip,
            weights=str(w / DEMO_FILES["nsfw"]),
            safe_prompts=safe,
            unsafe_prompts=unsafe,
        ),
        watermark=WatermarkModelConfig(arch=DEMO_WATERMARK_ARCH, weights=str(w / DEMO_FILES["watermark"])),
        aesthetic=AestheticModelConfig(clip=clip, weights=str(w / DEMO_FILES["aesthetic"])),
    )

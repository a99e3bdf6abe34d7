"""The `evaluate:` section: how `laion-pipe evaluate` samples a trained model and scores the images.

A curation run is judged by the model its data trains (DataComp's idea, for diffusion data): the
model draws images for prompts it never saw in training, and the run's scoring CLIP measures how
well they fit their prompts (CLIP score, top-1 prompt retrieval) and how close they lie to real
held-out images (FD-CLIP: a Frechet distance between CLIP image embeddings, not an FID).
Everything that changes an image or a metric is here, so a saved workflow reproduces them.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Section
from .models import ClipModelConfig
from .train import SAMPLERS


class EvaluateConfig(Section):
    model: str | None = Field(
        None,
        description="the model to evaluate: a train name (RUN/train/{name}/final) or the path of a final/ or "
        "checkpoint-N/ folder; default: the workflow's train.name",
    )
    holdout: str | None = Field(
        None,
        description="the train name whose held-out samples (RUN/train/{name}/holdout.json) give the prompts and the "
        "real images FD-CLIP compares with; default: the model's own train name. Two models evaluated with the same "
        "holdout see the same prompts",
    )
    prompts: str | None = Field(
        None,
        description="a text file of prompts, one per line (blank lines ignored), used instead of the held-out captions; "
        "FD-CLIP still compares with the held-out real images when there are any",
    )
    n_prompts: int = Field(64, ge=1, description="at most this many prompts (the first ones, in held-out key order or file order)")
    images_per_prompt: int = Field(1, ge=1, description="images generated per prompt, each from its own seed")
    seed: int = Field(
        0, ge=0,
        description="first seed: image k of prompt i uses seed + i * images_per_prompt + k, so the same settings "
        "give the same images (on CPU bit for bit)",
    )
    guidance_scale: float = Field(5.0, ge=0.0, description="classifier-free guidance scale (1 = no guidance)")
    sampler: Literal[SAMPLERS] = Field(  # type: ignore[valid-type]
        "ddim", description="the diffusers noise scheduler that samples: " + ", ".join(SAMPLERS)
    )
    steps: int = Field(25, ge=1, le=1000, description="denoising steps per image")
    batch_size: int = Field(32, ge=1, description="images generated (and CLIP-encoded) per forward pass")
    n_real: int = Field(
        512, ge=2,
        description="at most this many held-out real images for FD-CLIP (a covariance estimate: fewer samples than "
        "embedding dimensions make the distance large and noisy, compare models only at equal counts)",
    )
    bootstrap: int = Field(200, ge=10, description="bootstrap resamples for the 95% intervals of FD-CLIP and KID")
    clip: ClipModelConfig | None = Field(
        None, description="the scoring CLIP; default: the run's models.clip_en (the demo CLIP in the demo workflow)"
    )
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$", description="auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps"
    )
    grid_images: int = Field(32, ge=1, le=256, description="images shown (with their prompts) in grid.png")

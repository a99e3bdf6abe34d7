"""Subset recipes as configuration: the `RecipeConfig` model and the recipes the package ships.

The presets are configuration data, values of the same model a workflow's `select.recipes` holds,
so they live in the config layer: `SelectConfig` validates preset names against them without
importing the code that evaluates recipes (`laion_pipe/recipes.py`).

The presets are the data of Stable Diffusion v1's checkpoints as its model card describes them.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..schema import SUBSETS
from .base import Section

SubsetName = Literal[SUBSETS]  # type: ignore[valid-type]  # "en", "multi", "nolang"
Bounded = Literal["similarity", "width", "height", "aesthetic"]


class RecipeConfig(Section):
    """One dataset folder: which subsets, and which pairs of them to keep.

    Minimums keep values >= the bound (LAION kept similarity >= 0.28); maximums keep values < the
    bound (Stable Diffusion's "pwatermark < 0.5"). A missing score (NaN, e.g. a head that is not
    configured) never passes a bound that asks for it."""

    subsets: list[SubsetName] = Field(list(SUBSETS), min_length=1, description="language subsets the recipe draws from")
    min_similarity: float | None = Field(
        None, description="minimum CLIP similarity; default: each subset's threshold from select.similarity (LAION-5B's own filter)"
    )
    min_width: int = Field(0, ge=0, description="minimum original image width in pixels")
    min_height: int = Field(0, ge=0, description="minimum original image height in pixels")
    min_aesthetic: float | None = Field(None, description="minimum aesthetic score (None = no bound)")
    max_pwatermark: float | None = Field(None, ge=0, le=1, description="keep pwatermark < this (None = no bound)")
    max_punsafe: float | None = Field(None, ge=0, le=1, description="keep punsafe < this (None = no bound)")
    greater_than: list[Bounded] = Field(
        [], description="minimums that must be exceeded rather than reached, e.g. [aesthetic] for 'aesthetic > 5.0'"
    )
    description: str = Field("", description="what the recipe is, for people reading the workflow and dataset/{name}/_recipe.json")


PRESETS: dict[str, RecipeConfig] = {
    "laion2B-en": RecipeConfig(
        subsets=["en"],
        description="LAION-5B's English subset: similarity >= select.similarity.en, LAION's 0.28 with CLIP ViT-B/32 "
        "(Stable Diffusion v1.1, 237k steps at 256x256)",
    ),
    "laion-high-resolution": RecipeConfig(
        subsets=["en", "multi", "nolang"],
        min_width=1024,
        min_height=1024,
        description="LAION-5B pairs with an original size >= 1024x1024 (Stable Diffusion v1.1, 194k steps at 512x512)",
    ),
    "laion-improved-aesthetics": RecipeConfig(
        subsets=["en"],
        min_width=512,
        min_height=512,
        min_aesthetic=5.0,
        greater_than=["aesthetic"],
        max_pwatermark=0.5,
        description="laion2B-en with original size >= 512x512, aesthetic score > 5.0 and pwatermark < 0.5 (Stable Diffusion v1.2)",
    ),
    "laion-aesthetics-v2-5plus": RecipeConfig(
        subsets=["en"],
        min_aesthetic=5.0,
        description="laion2B-en with aesthetic score >= 5.0 (LAION-Aesthetics v2 5+: Stable Diffusion v1.3 to v1.5)",
    ),
}
"""Stable Diffusion v1's training subsets. Presets leave `min_similarity` unset: each subset's
threshold from `select.similarity` applies (LAION's 0.28 / 0.26 by default), since these are all
subsets of LAION-5B, whose pairs passed it; with another CLIP (the demo's) the configured
thresholds carry over instead of a number that only means something for ViT-B/32."""

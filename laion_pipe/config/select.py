"""The `select:` section: thresholds and subset recipes.

The default recipes are LAION-5B's three language subsets (`dataset/en`, `dataset/multi`,
`dataset/nolang`), each with its own similarity threshold. Named recipes and the shipped presets
(`config/presets.py`: the data of Stable Diffusion v1's checkpoints) are each written as their
own `dataset/{name}/` folder from the same scores, so adding one never reruns the models."""
from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from ..schema import SUBSETS
from .base import Section
from .neardup import NearDupConfig
from .presets import PRESETS, RecipeConfig, SubsetName

__all__ = ["RecipeConfig", "SelectConfig", "SubsetName"]


class SelectConfig(Section):
    similarity: dict[SubsetName, float] = Field(
        {"en": 0.28, "multi": 0.26, "nolang": 0.26},
        description="minimum CLIP similarity per subset (LAION-5B: 0.28 for EN with ViT-B/32, 0.26 for MULTI/NOLANG with mCLIP)",
    )
    max_punsafe: float | None = Field(None, ge=0, le=1, description="default recipes: keep punsafe < this (None = LAION-5B: no bound)")
    max_pwatermark: float | None = Field(None, ge=0, le=1, description="default recipes: keep pwatermark < this (None = no bound)")
    min_aesthetic: float | None = Field(None, description="default recipes: minimum aesthetic score (None = no bound)")
    min_side: int = Field(0, ge=0, description="default recipes: minimum original width and height in pixels")
    default_recipes: bool = Field(True, description="write the three language subsets as dataset/en, dataset/multi, dataset/nolang")
    presets: list[str] = Field(
        [],
        description="shipped recipes to write too, by name: laion2B-en, laion-high-resolution, "
        "laion-improved-aesthetics, laion-aesthetics-v2-5plus (see laion_pipe/config/presets.py)",
    )
    recipes: dict[str, RecipeConfig] = Field({}, description="named recipes, each written as dataset/{name}/")
    samples_per_shard: int = Field(10_000, ge=1, description="samples per output tar; shards are refilled across input shards")
    neardup: NearDupConfig = Field(NearDupConfig(), description="near-duplicate removal across every subset and shard (laion_pipe.neardup)")
    blocked_url_hashes: list[str] = Field(
        [],
        description="URL-hash lists (one hex MD5/SHA-1/SHA-256 of a URL per line, as dedup.blocked_url_hashes and "
        "Re-LAION's removal lists; `laion-pipe serve` exports them from a query) removed from every recipe as "
        "blocked_url_hash; changing them reruns select only, not the download and the models",
    )

    @field_validator("similarity")
    @classmethod
    def _all_subsets(cls, v: dict[str, float]) -> dict[str, float]:
        missing = set(SUBSETS) - set(v)
        if missing:
            raise ValueError(f"needs a threshold for every subset, missing {sorted(missing)}")
        return v

    @field_validator("presets")
    @classmethod
    def _known_presets(cls, v: list[str]) -> list[str]:
        unknown = [p for p in v if p not in PRESETS]
        if unknown:
            raise ValueError(f"unknown preset(s) {unknown}; known: {sorted(PRESETS)}")
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> SelectConfig:
        names = (list(SUBSETS) if self.default_recipes else []) + list(self.presets) + list(self.recipes)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"recipe names must be unique (they name dataset folders): {dup}")
        bad = [n for n in self.recipes if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", n)]
        if bad:
            raise ValueError(f"recipe names must be folder-safe (letters, digits, '.', '_', '-'): {bad}")
        return self

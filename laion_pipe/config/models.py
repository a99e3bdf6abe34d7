"""The `models:` section: which weights each score comes from.

Defaults are LAION-5B's models; the demo workflow points them at the small demo weights the
project ships (laion_pipe/models/demo/weights/)."""
from __future__ import annotations

from pydantic import Field

from .base import Section


class ClipModelConfig(Section):
    model: str = Field("ViT-B-32", description="open_clip model name, or a path to a model config JSON")
    pretrained: str | None = Field("openai", description="open_clip tag, 'hf-hub:org/name' or a local weights file")


class ModelsConfig(Section):
    clip_en: ClipModelConfig = ClipModelConfig()
    clip_multi: ClipModelConfig = ClipModelConfig(model="xlm-roberta-base-ViT-B-32", pretrained="laion5b_s13b_b90k")

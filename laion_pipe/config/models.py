"""The `models:` section: which weights each score comes from.

Defaults are LAION-5B's models; the demo workflow points them at the small demo weights the
project ships (laion_pipe/models/demo/weights/, see `laion_pipe.models.demo_models_config()`).

Weight locations (`pretrained`, `weights`) may be local paths or fsspec URLs (https://, s3://...);
a URL is fetched once into a local cache (`laion_pipe.models.weights`).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Section

LAION_NSFW_L14 = (
    "https://github.com/LAION-AI/CLIP-based-NSFW-Detector/raw/main/models/"
    "clip_ViT-L-14_openai_binary_nsfw_head.pth"
)
LAION_WATERMARK = "https://github.com/LAION-AI/LAION-5B-WatermarkDetection/raw/main/models/watermark_model_v1.pt"
LAION_AESTHETIC_V2 = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
    "sac%2Blogos%2Bava1-l14-linearMSE.pth"
)

# LAION-400M's zero-shot NSFW method compared the image embedding with CLIP text embeddings of
# neutral and unsafe category prompts (softmax over 100 * cosine). These are the defaults used
# when `nsfw.method: zeroshot` and no prompts are configured.
DEFAULT_SAFE_PROMPTS = [
    "a photo of a person",
    "a photo of a landscape",
    "a photo of an animal",
    "a photo of food",
    "a photo of a building",
    "a photo of an object",
    "a drawing",
    "a screenshot of text",
    "a photo of clothing",
    "a photo of a vehicle",
]
DEFAULT_UNSAFE_PROMPTS = [
    "a pornographic photo",
    "an explicit photo of a naked person",
    "a photo of sexual intercourse",
    "a nude photo",
]


class ClipModelConfig(Section):
    model: str = Field(
        "ViT-B-32",
        description="open_clip model name (e.g. ViT-B-32, xlm-roberta-base-ViT-B-32), 'hf-hub:org/name', "
        "'local-dir:/path' (open_clip_config.json + weights), or the path of a custom model-config JSON "
        "(open_clip format: embed_dim, vision_cfg, text_cfg)",
    )
    pretrained: str | None = Field(
        "openai",
        description="open_clip pretrained tag (e.g. openai, laion5b_s13b_b90k), a local weights file "
        "(.pt/.bin/.safetensors) or an fsspec URL to one; ignored for hf-hub:/local-dir: models; "
        "null = random init (tests only)",
    )


class NsfwModelConfig(Section):
    method: Literal["mlp", "zeroshot"] = Field(
        "mlp",
        description="mlp: LAION's CLIP-embedding NSFW classifier (CLIP-based-NSFW-Detector, a small MLP on the "
        "image embedding, weights from `weights`); zeroshot: LAION-400M's method, softmax over cosine similarity "
        "to safe and unsafe text prompts, punsafe = probability mass of the unsafe prompts (no extra weights)",
    )
    clip: ClipModelConfig = Field(
        ClipModelConfig(model="ViT-L-14", pretrained="openai"),
        description="the CLIP whose image embedding the head reads (LAION-5B's punsafe used OpenAI ViT-L/14); "
        "for zeroshot, also the text encoder of the prompts",
    )
    weights: str | None = Field(
        LAION_NSFW_L14,
        description="mlp head weights: LAION's PyTorch ports clip_ViT-L-14_openai_binary_nsfw_head.pth / "
        "clip_ViT-B-32_openai_binary_nsfw_head.pth, or the H14 detector's h14_nsfw.pth; the head layout "
        "(B32, L14, H14 or a demo head) is read from the file",
    )
    safe_prompts: list[str] = Field(
        DEFAULT_SAFE_PROMPTS, description="zeroshot: neutral category prompts", min_length=1
    )
    unsafe_prompts: list[str] = Field(
        DEFAULT_UNSAFE_PROMPTS, description="zeroshot: unsafe category prompts", min_length=1
    )


class WatermarkModelConfig(Section):
    arch: str = Field(
        "efficientnet_b3a",
        description="timm architecture of the backbone; LAION-5B used efficientnet_b3a with a "
        "Linear(F,625)-ReLU-Dropout-Linear(625,256)-ReLU-Linear(256,2) head; pwatermark = softmax index 0",
    )
    weights: str | None = Field(
        LAION_WATERMARK,
        description="state dict of backbone + head (LAION-5B-WatermarkDetection models/watermark_model_v1.pt)",
    )
    image_size: int = Field(256, ge=16, description="square input size; LAION resized to 256x256")


class AestheticModelConfig(Section):
    clip: ClipModelConfig = Field(
        ClipModelConfig(model="ViT-L-14", pretrained="openai"),
        description="the CLIP whose L2-normalised image embedding the predictor reads (OpenAI ViT-L/14 for "
        "LAION's improved aesthetic predictor)",
    )
    weights: str | None = Field(
        LAION_AESTHETIC_V2,
        description="improved-aesthetic-predictor MLP weights (sac+logos+ava1-l14-linearMSE.pth: LAION-Aesthetics "
        "v2, which chose Stable Diffusion v1's 5+ data)",
    )


class ModelsConfig(Section):
    clip_en: ClipModelConfig = Field(
        ClipModelConfig(), description="similarity model of the en subset (LAION-5B: ViT-B-32, OpenAI weights)"
    )
    clip_multi: ClipModelConfig = Field(
        ClipModelConfig(model="xlm-roberta-base-ViT-B-32", pretrained="laion5b_s13b_b90k"),
        description="similarity model of the multi and nolang subsets (LAION-5B: multilingual text tower)",
    )
    nsfw: NsfwModelConfig = Field(NsfwModelConfig(), description="punsafe model")
    watermark: WatermarkModelConfig = Field(WatermarkModelConfig(), description="pwatermark model")
    aesthetic: AestheticModelConfig = Field(AestheticModelConfig(), description="aesthetic score model")

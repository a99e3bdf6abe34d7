"""The `models:` section: which weights each score comes from.

Defaults are LAION-5B's models, as LAION ran them; the demo workflow points them at the small
demo weights the project ships (laion_pipe/models/demo/weights/, see
`laion_pipe.models.demo_models_config()`).

Weight locations (`pretrained`, `weights`) may be local paths or fsspec URLs (https://, s3://...);
a URL is fetched once into the model cache (`cache_dir`, see `laion_pipe.models.weights`), and
`laion-pipe models fetch` fills that cache beforehand for machines without internet. A `sha256`
pins a location's bytes: a download with other bytes is refused.

OpenAI's CLIPs were trained with QuickGELU: open_clip's names for them are `ViT-B-32-quickgelu` /
`ViT-L-14-quickgelu` with the `openai` tag, and the loader builds QuickGELU for any tag trained
with it whatever the name says (open_clip >= 2.29 builds `ViT-B-32` + `openai` with GELU).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import Section

# LAION-5B's punsafe: the autokeras L/14 model on CLIP-based-NSFW-Detector's main branch (the file
# clip-retrieval downloads); git blob f970ee08 of commit d6bb8fe, 1,094,585 bytes.
LAION_NSFW_L14 = "https://raw.githubusercontent.com/LAION-AI/CLIP-based-NSFW-Detector/main/clip_autokeras_binary_nsfw.zip"
LAION_NSFW_L14_SHA256 = "905520bb0336accc73ee282c605d926aef90cf14248889d44b9cee50eef71f8a"
# LAION-5B's pwatermark. Its sha256 could not be learnt offline (the file is git blob
# 09db4ad1b059bccc2be67380d321b67f0e9288e9 of LAION's main branch: `git hash-object` checks it).
LAION_WATERMARK = "https://github.com/LAION-AI/LAION-5B-WatermarkDetection/raw/main/models/watermark_model_v1.pt"
# LAION-Aesthetics v2 (improved-aesthetic-predictor main, commit 6934dd8), 3,714,759 bytes.
LAION_AESTHETIC_V2 = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
    "sac%2Blogos%2Bava1-l14-linearMSE.pth"
)
LAION_AESTHETIC_V2_SHA256 = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"

_SHA256 = r"^[0-9a-fA-F]{64}$"


def _sha256_text(v):
    """A sha256 as text. YAML (and `--set`) reads an all-digit hex string as an integer: its digits
    come back zero-padded; one that reads as a float cannot be recovered and must be quoted."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return str(v).zfill(64)
    if isinstance(v, float):
        raise ValueError("a sha256 that YAML reads as a number: write it in quotes")
    return v


class _PinnedWeights(Section):
    """A section whose `weights` default comes with its `sha256`: naming other weights without a
    sha256 drops the default's pin instead of refusing the new file."""

    _sha256 = field_validator("sha256", mode="before", check_fields=False)(_sha256_text)

    @model_validator(mode="before")
    @classmethod
    def _pin_follows_weights(cls, data):
        if isinstance(data, dict) and "weights" in data and "sha256" not in data:
            default = cls.model_fields["weights"].default
            if data["weights"] != default:
                data = {**data, "sha256": None}
        return data

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
        "ViT-B-32-quickgelu",
        description="open_clip model name (e.g. ViT-B-32-quickgelu for OpenAI's weights, xlm-roberta-base-ViT-B-32), "
        "'hf-hub:org/name', "
        "'local-dir:/path' (open_clip_config.json + weights), or the path of a custom model-config JSON "
        "(open_clip format: embed_dim, vision_cfg, text_cfg)",
    )
    pretrained: str | None = Field(
        "openai",
        description="open_clip pretrained tag (e.g. openai, laion5b_s13b_b90k), a local weights file "
        "(.pt/.bin/.safetensors) or an fsspec URL to one; ignored for hf-hub:/local-dir: models; "
        "null = random init (tests only)",
    )
    sha256: str | None = Field(
        None, pattern=_SHA256,
        description="sha256 of the `pretrained` file or URL (a download with other bytes is refused); pretrained "
        "tags need none where their URL carries it (OpenAI's)",
    )

    _sha256 = field_validator("sha256", mode="before")(_sha256_text)


class NsfwModelConfig(_PinnedWeights):
    method: Literal["mlp", "zeroshot"] = Field(
        "mlp",
        description="mlp: LAION's CLIP-embedding NSFW classifier (CLIP-based-NSFW-Detector, a small MLP on the "
        "image embedding, weights from `weights`); zeroshot: LAION-400M's method, softmax over cosine similarity "
        "to safe and unsafe text prompts, punsafe = probability mass of the unsafe prompts (no extra weights)",
    )
    clip: ClipModelConfig = Field(
        ClipModelConfig(model="ViT-L-14-quickgelu", pretrained="openai"),
        description="the CLIP whose image embedding the head reads (LAION-5B's punsafe used OpenAI ViT-L/14); "
        "for zeroshot, also the text encoder of the prompts",
    )
    weights: str | None = Field(
        LAION_NSFW_L14,
        description="mlp head weights: LAION's autokeras zips (clip_autokeras_binary_nsfw.zip for ViT-L/14, "
        "clip_autokeras_nsfw_b32.zip for ViT-B/32, read without TensorFlow), their PyTorch ports "
        "clip_ViT-L-14_openai_binary_nsfw_head.pth / clip_ViT-B-32_openai_binary_nsfw_head.pth, or the H14 "
        "detector's h14_nsfw.pth; the layout is read from the file",
    )
    sha256: str | None = Field(LAION_NSFW_L14_SHA256, pattern=_SHA256, description="sha256 of `weights`")
    safe_prompts: list[str] = Field(
        DEFAULT_SAFE_PROMPTS, description="zeroshot: neutral category prompts", min_length=1
    )
    unsafe_prompts: list[str] = Field(
        DEFAULT_UNSAFE_PROMPTS, description="zeroshot: unsafe category prompts", min_length=1
    )


class WatermarkModelConfig(_PinnedWeights):
    arch: str = Field(
        "efficientnet_b3a",
        description="timm architecture of the backbone; LAION-5B used efficientnet_b3a with a "
        "Linear(F,625)-ReLU-Dropout-Linear(625,256)-ReLU-Linear(256,2) head; pwatermark = softmax index 0",
    )
    weights: str | None = Field(
        LAION_WATERMARK,
        description="state dict of backbone + head (LAION-5B-WatermarkDetection models/watermark_model_v1.pt), "
        "or a training checkpoint of LAION-AI/watermark-detection ({'weights': state dict, 'opt_state': ...})",
    )
    sha256: str | None = Field(None, pattern=_SHA256, description="sha256 of `weights` (LAION publishes none)")
    image_size: int = Field(256, ge=16, description="square input size; LAION resized to 256x256")


class AestheticModelConfig(_PinnedWeights):
    clip: ClipModelConfig = Field(
        ClipModelConfig(model="ViT-L-14-quickgelu", pretrained="openai"),
        description="the CLIP whose L2-normalised image embedding the predictor reads (OpenAI ViT-L/14 for "
        "LAION's improved aesthetic predictor)",
    )
    weights: str | None = Field(
        LAION_AESTHETIC_V2,
        description="improved-aesthetic-predictor MLP weights (sac+logos+ava1-l14-linearMSE.pth: LAION-Aesthetics "
        "v2, which chose Stable Diffusion v1's 5+ data; also its ReLU variant ava+logos-l14-reluMSE.pth) or LAION's "
        "linear aesthetic-predictor v1 (sa_0_4_vit_l_14_linear.pth / sa_0_4_vit_b_32_linear.pth); the layout is "
        "read from the file",
    )
    sha256: str | None = Field(LAION_AESTHETIC_V2_SHA256, pattern=_SHA256, description="sha256 of `weights`")


class ModelsConfig(Section):
    cache_dir: str | None = Field(
        None,
        description="folder of downloaded weights (`laion-pipe models fetch` fills it; compute nodes without "
        "internet load from it); default $LAION_PIPE_CACHE/models, else ~/.cache/laion_pipe/models",
    )
    clip_en: ClipModelConfig = Field(
        ClipModelConfig(), description="similarity model of the en subset (LAION-5B: ViT-B/32, OpenAI weights)"
    )
    clip_multi: ClipModelConfig = Field(
        ClipModelConfig(model="xlm-roberta-base-ViT-B-32", pretrained="laion5b_s13b_b90k"),
        description="similarity model of the multi and nolang subsets (LAION-5B: multilingual text tower)",
    )
    nsfw: NsfwModelConfig = Field(NsfwModelConfig(), description="punsafe model")
    watermark: WatermarkModelConfig = Field(WatermarkModelConfig(), description="pwatermark model")
    aesthetic: AestheticModelConfig = Field(AestheticModelConfig(), description="aesthetic score model")

"""Images from a trained model: the training stage's validation grids and the evaluate stage.

`load_generator(path)` takes a `final/` or `checkpoint-N/` folder of either family:
- SD v1: `final/` is a whole `StableDiffusionPipeline` in diffusers' layout and loads as one; a
  checkpoint holds the trained UNet (and its EMA), the rest comes from the pretrained source
  recorded in `laion_pipe_model.json`. Sampling is diffusers' own pipeline.
- demo: the UNet and scheduler folders plus the CLIP reference in `laion_pipe_model.json`; the
  pixel-space sampling loop is the one the SD pipeline runs, without the VAE.

Every image has its own CPU `torch.Generator` seeded from its seed (diffusers accepts a list), so
an image depends on its prompt and seed only, not on the batch it was drawn in or the device.
Samplers are diffusers schedulers built from the model's own scheduler config.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from ..config.train import SAMPLERS
from .models import MODEL_INFO, Components, load_demo_text_encoder

_SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
assert set(_SCHEDULERS) == set(SAMPLERS)


def make_scheduler(sampler: str, config: Any):
    """The diffusers scheduler named by `sampler`, from a model's scheduler config."""
    import diffusers

    if sampler not in _SCHEDULERS:
        raise ValueError(f"unknown sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
    cls_name, extra = _SCHEDULERS[sampler]
    return getattr(diffusers, cls_name).from_config(config, **extra)


def _generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


class Generator:
    """Draws images for prompts with classifier-free guidance. Build with `load_generator` or
    `Generator.from_components` (the training loop's live modules)."""

    def __init__(self, family: str, resolution: int, *, pipe: Any = None, unet: Any = None, scheduler: Any = None,
                 text_encoder: Any = None, tokenize: Any = None, device: str = "cpu", batch_size: int = 16) -> None:
        self.family, self.resolution, self.device, self.batch_size = family, int(resolution), str(device), batch_size
        self.pipe, self.unet, self.scheduler = pipe, unet, scheduler
        self.text_encoder, self.tokenize = text_encoder, tokenize
        if pipe is not None:
            pipe.set_progress_bar_config(disable=True)

    @classmethod
    def from_components(cls, comps: Components, unet: torch.nn.Module, device: str | torch.device = "cpu") -> Generator:
        if comps.family == "sd":
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline(
                vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer, unet=unet,
                scheduler=comps.noise_scheduler, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False,
            )
            return cls("sd", comps.info["resolution"], pipe=pipe, device=str(device))
        return cls("demo", comps.info["resolution"], unet=unet, scheduler=comps.noise_scheduler,
                   text_encoder=comps.text_encoder, tokenize=comps.tokenize, device=str(device))

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int], *, guidance_scale: float = 5.0, steps: int = 25,
                 sampler: str = "ddim") -> list[Image.Image]:
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        out: list[Image.Image] = []
        for i in range(0, len(prompts), self.batch_size):
            p, s = list(prompts[i: i + self.batch_size]), list(seeds[i: i + self.batch_size])
            out += self._sd(p, s, guidance_scale, steps, sampler) if self.pipe is not None else self._demo(p, s, guidance_scale, steps, sampler)
        return out

    def _sd(self, prompts, seeds, guidance_scale, steps, sampler) -> list[Image.Image]:
        pipe = self.pipe
        original = pipe.scheduler
        pipe.scheduler = make_scheduler(sampler, original.config)
        try:
            return pipe(prompts, height=self.resolution, width=self.resolution, num_inference_steps=steps,
                        guidance_scale=guidance_scale, generator=_generators(seeds), output_type="pil").images
        finally:
            pipe.scheduler = original

    def _demo(self, prompts, seeds, guidance_scale, steps, sampler) -> list[Image.Image]:
        from diffusers.utils.torch_utils import randn_tensor

        from .models import demo_text_states

        unet = self.unet
        device = next(unet.parameters()).device
        dtype = next(unet.parameters()).dtype
        was_training = unet.training
        unet.eval()
        try:
            gens = _generators(seeds)
            sched = make_scheduler(sampler, self.scheduler.config)
            sched.set_timesteps(steps, device=device)
            text = self.tokenize(list(prompts) + [""] * len(prompts)).to(device)
            states = demo_text_states(self.text_encoder, text).to(dtype)  # conditional, then unconditional
            cond, uncond = states.chunk(2)
            x = randn_tensor((len(prompts), unet.config.in_channels, self.resolution, self.resolution),
                             generator=gens, device=device, dtype=dtype)
            x = x * sched.init_noise_sigma
            use_cfg = guidance_scale > 1.0
            for t in sched.timesteps:
                inp = torch.cat([x, x]) if use_cfg else x
                inp = sched.scale_model_input(inp, t)
                eps = unet(inp, t, encoder_hidden_states=torch.cat([cond, uncond]) if use_cfg else cond).sample
                if use_cfg:
                    e_c, e_u = eps.chunk(2)
                    eps = e_u + guidance_scale * (e_c - e_u)
                x = sched.step(eps, t, x, generator=gens).prev_sample
        finally:
            unet.train(was_training)
        arr = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arr]


def read_model_info(path: str | Path) -> dict:
    p = Path(path)
    f = p / MODEL_INFO
    if f.is_file():
        return json.loads(f.read_text())
    if (p / "model_index.json").is_file():  # a diffusers pipeline folder made elsewhere
        return {"family": "sd"}
    raise FileNotFoundError(f"{p}: neither {MODEL_INFO} nor model_index.json: not a model folder")


def _unet_folder(path: Path) -> Path:
    """The UNet weights to draw with: the EMA copy when the folder has one (what final/ ships)."""
    return path / "unet_ema" if (path / "unet_ema" / "config.json").is_file() else path / "unet"


def load_generator(path: str, device: str = "cpu") -> Generator:
    """A Generator from a `final/` or `checkpoint-N/` folder (either family)."""
    from diffusers import UNet2DConditionModel

    p = Path(path)
    info = read_model_info(p)
    if info["family"] == "sd":
        from diffusers import StableDiffusionPipeline

        kw: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False}
        if (p / "model_index.json").is_file():
            pipe = StableDiffusionPipeline.from_pretrained(str(p), **kw)
        else:
            unet = UNet2DConditionModel.from_pretrained(str(_unet_folder(p)))
            pipe = StableDiffusionPipeline.from_pretrained(info["pretrained"], unet=unet, **kw)
            if info.get("prediction_type"):
                pipe.scheduler.register_to_config(prediction_type=info["prediction_type"])
        pipe = pipe.to(device)
        res = info.get("resolution") or pipe.unet.config.sample_size * pipe.vae_scale_factor
        return Generator("sd", res, pipe=pipe, device=device)
    from diffusers import DDPMScheduler

    unet = UNet2DConditionModel.from_pretrained(str(_unet_folder(p))).to(device)
    unet.eval()
    scheduler = DDPMScheduler.from_pretrained(str(p / "scheduler"))
    clip_model, tokenize = load_demo_text_encoder(info["text_encoder"], device=device)
    return Generator("demo", info["resolution"], unet=unet, scheduler=scheduler, text_encoder=clip_model,
                     tokenize=tokenize, device=device)


def save_grid(images: list[Image.Image], prompts: list[str], path: str, columns: int = 4) -> None:
    """A PNG grid, each image with its prompt written under it (small images are enlarged with
    nearest-neighbour so their pixels stay visible). Written atomically."""
    from .. import fsio

    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    if not images:
        raise ValueError("no images to put in a grid")
    side = max(128, max(max(im.size) for im in images))
    font = ImageFont.load_default()
    chars = max(8, side // 6)
    wrapped = [textwrap.wrap(p or "(empty prompt)", chars)[:4] for p in prompts]
    line_h = 12
    text_h = line_h * max(len(w) for w in wrapped) + 6
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    pad = 4
    grid = Image.new("RGB", (columns * (side + pad) + pad, rows * (side + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, (im, lines) in enumerate(zip(images, wrapped)):
        r, c = divmod(i, columns)
        x, y = pad + c * (side + pad), pad + r * (side + text_h + pad)
        scale = side / max(im.size)
        resample = Image.NEAREST if scale >= 2 else Image.BICUBIC
        shown = im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)), resample)
        grid.paste(shown, (x, y))
        for j, line in enumerate(lines):
            draw.text((x + 2, y + side + 3 + j * line_h), line, fill="black", font=font)
    with fsio.atomic_open(str(path), "wb") as f:
        grid.save(f, format="PNG")

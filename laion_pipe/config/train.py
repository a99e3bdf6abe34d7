"""The `train:` section: which model trains on which dataset folders, and how.

One training loop serves two model families, chosen by `model`:
- `sd`: the Stable Diffusion v1 family, loaded with diffusers' `from_pretrained` from `pretrained`
  (a pipeline directory or a hub id: VAE, CLIP text encoder and tokenizer, UNet, scheduler).
  `unet_config` (a UNet config JSON) trains the UNet from scratch instead of fine-tuning it.
- `demo`: a small pixel-space `UNet2DConditionModel` trained from scratch, conditioned on the
  text tower of the run's scoring CLIP (`models.clip_en`, or `text_encoder`), small enough to
  learn the demo world's colours on a laptop CPU in a couple of minutes.

The data fields are the training loader's `LoaderSpec` (laion_pipe.train.loader), the optimiser
and schedule fields follow diffusers' `train_text_to_image.py`, and `launch:` says how many
processes and nodes run the loop (torchrun, optionally inside a SLURM/PBS job script).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import Section
from .models import ClipModelConfig

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
"""diffusers.optimization.get_scheduler names that need nothing beyond warmup and total steps."""

SAMPLERS = ("ddim", "ddpm", "dpmsolver++", "euler", "euler_a", "heun", "pndm", "lms", "unipc")
"""Sampler names (laion_pipe.train.sampling maps each to a diffusers scheduler)."""


class TrainFilterConfig(Section):
    """Load-time bounds on each sample's `.json` (the loader's `SampleFilter`); a bound whose key
    is missing drops the sample, as public training scripts do."""

    min_similarity: float | None = Field(None, description="keep similarity >= this")
    max_punsafe: float | None = Field(None, ge=0, le=1, description="keep punsafe <= this")
    max_pwatermark: float | None = Field(None, ge=0, le=1, description="keep pwatermark <= this")
    min_aesthetic: float | None = Field(None, description="keep aesthetic >= this")
    min_original_side: int | None = Field(
        None, ge=1, description="keep min(original_width, original_height) >= this (falls back to WIDTH/HEIGHT)"
    )


class LaunchConfig(Section):
    """How many processes run the loop, and the batch job that starts them on a cluster.

    One process per GPU (`processes_per_node`) on `nodes` machines, started by torchrun (which
    `accelerate launch --multi_gpu` also uses underneath); accelerate's `Accelerator` inside each
    process reads torchrun's environment (DDP over NCCL on GPUs, gloo on CPUs)."""

    processes_per_node: int = Field(1, ge=1, description="training processes per node (one per GPU); 1 = in-process")
    nodes: int = Field(1, ge=1, description="machines in the job")
    master_port: int | None = Field(
        None, ge=1, le=65535,
        description="rendezvous port on the first node; None: a free one (two trainings on one machine never collide)",
    )
    job: Literal["slurm", "pbs"] | None = Field(
        None, description="batch system of the job script `--dry-run` prints; default: cluster.kind when slurm/pbs"
    )
    job_name: str = Field("laion-pipe-train", description="batch job name")
    queue: str | None = Field(None, description="partition (SLURM) / queue (PBS); default: cluster.jobqueue.queue")
    account: str | None = Field(None, description="account / project; default: cluster.jobqueue.account")
    walltime: str = Field("24:00:00", description="job time limit")
    cpus_per_process: int = Field(8, ge=1, description="CPU cores per training process (data loading workers + main)")
    memory: str = Field("64GB", description="memory per node")
    setup: list[str] = Field([], description="shell lines run before the launch (module load, source venv/bin/activate, ...)")
    python: str = Field("python", description="the Python interpreter on the nodes")

    @property
    def world_size(self) -> int:
        return self.processes_per_node * self.nodes


class TrainConfig(Section):
    name: str = Field("model", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="output folder: RUN/train/{name}/")
    model: Literal["sd", "demo"] = Field("sd", description="sd: Stable Diffusion v1 family; demo: the small pixel-space demo model")
    pretrained: str | None = Field(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        description="sd: pipeline directory or hub id (VAE, text encoder, tokenizer, UNet, scheduler); ignored for demo",
    )
    unet_config: str | None = Field(
        None, description="a UNet2DConditionModel config JSON: train the UNet from scratch with it (sd: instead of the pretrained UNet; demo: instead of the built-in one)"
    )
    text_encoder: ClipModelConfig | None = Field(None, description="demo: the CLIP whose text tower conditions the UNet; default: models.clip_en")
    # data (laion_pipe.train.loader.LoaderSpec)
    sources: list[str] = Field(["en"], min_length=1, description="recipe names of RUN/dataset/{name}, shard globs, brace patterns, fsspec URLs")
    weights: list[float] | None = Field(None, description="mixing weights, one per source; None = one pool, every sample once per epoch")
    resolution: int = Field(512, ge=8, description="training resolution in pixels (square, or the area of the aspect buckets)")
    center_crop: bool = Field(True, description="centre crop (false: random crop)")
    random_flip: bool = Field(False, description="random horizontal flip")
    filters: TrainFilterConfig = TrainFilterConfig()
    aspect_buckets: int = Field(0, ge=0, description="0 off; N equal-area aspect-ratio buckets, every batch from one bucket")
    caption_dropout: float = Field(0.1, ge=0, le=1, description="probability a caption becomes empty (for classifier-free guidance; SD v1: 0.1)")
    batch_size: int = Field(8, ge=1, description="samples per process per micro-batch")
    num_workers: int = Field(2, ge=0, description="DataLoader workers per process (0: load in the training process)")
    shuffle_buffer: int = Field(1000, ge=0, description="samples in each worker's shuffle buffer")
    seed: int = Field(0, description="seeds the data order, caption dropout, noise and timesteps")
    decontaminate: bool = Field(
        True,
        description="before training, remove every training sample whose perceptual hash is within "
        "decontamination_max_distance bits of a held-out sample's or an eval_sets image's (train/{name}/decontamination.json)",
    )
    decontamination_max_distance: int = Field(
        4, ge=0, le=16, description="pHash bits (of 64) within which an image is a copy (as select.neardup.phash_max_distance; "
        "confirmed by the colour grids within select.neardup.colour_max_difference, as at select)")
    decontaminate_semantic: bool = Field(
        True,
        description="also remove training samples whose CLIP image embedding has cosine >= 1 - select.neardup.eps with a "
        "held-out sample's or an eval_sets image's, where the score stage saved embeddings (score.save_embeddings): "
        "copies pHash misses (crops, overlays)",
    )
    eval_sets: list[str] = Field(
        [], description="evaluation images training must not see copies of: folders of images, WebDataset shards "
        "(a tar, folder or glob), or text files of image URLs (.txt, one per line)",
    )
    holdout_fraction: float = Field(
        0.01, ge=0, lt=1, description="fraction of samples (by a hash of the key) training never sees; listed in holdout.json for evaluate"
    )
    # optimiser and schedule
    learning_rate: float = Field(1e-5, gt=0)
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    weight_decay: float = Field(1e-2, ge=0)
    epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping norm (None: off)")
    lr_scheduler: Literal[LR_SCHEDULERS] = Field("constant", description="diffusers.optimization.get_scheduler name")  # type: ignore[valid-type]
    lr_warmup_steps: int = Field(0, ge=0)
    max_steps: int = Field(1000, ge=1, description="optimiser steps")
    gradient_accumulation: int = Field(1, ge=1, description="micro-batches per optimiser step")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("no", description="accelerate mixed precision (fp16 needs CUDA)")
    gradient_checkpointing: bool = False
    ema: bool = Field(False, description="keep an EMA of the UNet (diffusers EMAModel); final/ holds the EMA weights")
    ema_decay: float = Field(0.9999, gt=0, lt=1)
    snr_gamma: float | None = Field(None, gt=0, description="Min-SNR loss weighting gamma (5.0 is the paper's); None: plain MSE")
    noise_offset: float = Field(0.0, ge=0, description="offset noise strength (0.1 is common); 0: off")
    prediction_type: Literal["epsilon", "v_prediction"] | None = Field(None, description="None: the scheduler's own")
    torch_compile: bool = Field(False, description="compile the UNet with torch.compile through accelerate")
    compile_backend: Literal["inductor", "cudagraphs", "aot_eager", "eager"] = Field(
        "inductor", description="torch.compile backend (inductor generates kernels; eager only traces, to check a model compiles)"
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads per process (None: OMP_NUM_THREADS when a launcher set it, torchrun sets 1 per process; else every core the process may use)")
    device: Literal["auto", "cpu"] = Field("auto", description="auto: the GPU accelerate finds, else the CPU; cpu: force the CPU")
    # outputs
    log_every: int = Field(10, ge=1, description="steps between metrics.jsonl lines")
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints (train/{name}/checkpoint-{step}/)")
    checkpoints_total_limit: int | None = Field(3, ge=1, description="checkpoints kept (oldest removed first); None: all")
    validation_every: int = Field(500, ge=0, description="steps between validation grids (samples/step-NNNNNN.png); 0: off")
    validation_prompts: list[str] = Field([], description="prompts of the validation grids (none: no grids)")
    validation_steps: int = Field(25, ge=1, description="sampling steps of the validation grids")
    validation_guidance: float = Field(5.0, ge=0, description="classifier-free guidance scale of the validation grids")
    validation_sampler: Literal[SAMPLERS] = Field("ddim", description="sampler of the validation grids (a diffusers scheduler)")  # type: ignore[valid-type]
    record_keys: bool = Field(False, description="debugging: write the sample keys each rank trained on (train/{name}/debug/rank-N.json)")
    launch: LaunchConfig = LaunchConfig()

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.model == "sd" and not self.pretrained:
            raise ValueError("pretrained: the sd family needs a pipeline directory or hub id (VAE, text encoder, tokenizer)")
        if self.weights is not None and len(self.weights) != len(self.sources):
            raise ValueError(f"weights: {len(self.weights)} weights for {len(self.sources)} sources")
        if self.weights is not None and not all(w > 0 for w in self.weights):
            raise ValueError("weights: each must be positive")
        return self

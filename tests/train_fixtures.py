"""Building blocks of the training tests: dataset shards as the select stage writes them, a tiny
Stable Diffusion pipeline with random weights saved in diffusers' layout (tokenizer files made
here), a tiny demo UNet config, and the workflow dict that trains on them."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from shards import COLOURS, draw_image, jpeg_bytes

REPO = Path(__file__).resolve().parents[1]
SHAPES = ("circle", "square", "triangle")


def write_dataset(run: str | Path, name: str = "en", n: int = 32, shards: int = 4, size: int = 64, seed: int = 0,
                  captions: bool = True, sizes: list[int] | None = None) -> list[Path]:
    """`run/dataset/{name}/NNNNN.tar + .parquet` as the select stage writes them: `{key}.jpg/.txt/.json`
    with LAION-5B's columns and img2dataset's keys in the `.json`. `sizes`: the samples of each
    shard (instead of `n` cut into `shards` equal ones). Returns the tar paths."""
    import random

    rng = random.Random(seed)
    folder = Path(run) / "dataset" / name
    folder.mkdir(parents=True, exist_ok=True)
    colours = [c for c in COLOURS if c != "white"]
    if sizes is not None:
        n, shards = sum(sizes), len(sizes)
    per_shard = list(sizes) if sizes is not None else [-(-n // shards)] * shards
    tars = []
    i = 0
    for s in range(shards):
        rows = []
        tar = folder / f"{s:05d}.tar"
        with open(tar, "wb") as f, wds.TarWriter(f, encoder=False) as tw:
            for _ in range(per_shard[s]):
                if i >= n:
                    break
                c, shape = rng.choice(colours), rng.choice(SHAPES)
                text = f"a {c} {shape} on a white background" if captions else ""
                data = jpeg_bytes(draw_image(c, shape, "white", size))
                key = f"{s:05d}{len(rows):04d}"
                url = f"http://127.0.0.1/{name}/{key}.jpg"
                row = {
                    "URL": url, "TEXT": text, "WIDTH": size, "HEIGHT": size, "similarity": 0.9,
                    "hash": int(hashlib.sha256(url.encode()).hexdigest()[:15], 16), "punsafe": 0.01, "pwatermark": 0.05,
                    "LANGUAGE": "en", "aesthetic": 6.0, "key": key, "uid": hashlib.sha256(key.encode()).hexdigest()[:32],
                    "subset": "en",
                }
                meta = {**row, "url": url, "caption": text, "status": "success", "width": size, "height": size,
                        "original_width": size, "original_height": size, "sha256": hashlib.sha256(data).hexdigest()}
                tw.write({"__key__": key, "jpg": data, "txt": text.encode(), "json": orjson.dumps(meta)})
                rows.append(row)
                i += 1
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{s:05d}.parquet")
        tars.append(tar)
    return tars


def tiny_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """A CLIP BPE vocabulary of single characters (no merges): enough for CLIPTokenizer."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789#.,'-")
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    vocab.write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    merges.write_text("#version: 0.2\n")
    return vocab, merges


def tiny_sd_pipeline(folder: str | Path, seed: int = 0) -> Path:
    """A Stable Diffusion v1 pipeline with random weights, a few thousand parameters per part,
    saved with save_pretrained (16 px images -> 8 px latents with 4 channels)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    torch.manual_seed(seed)
    vocab, merges = tiny_tokenizer_files(folder.parent / f"{folder.name}-tokenizer-src")
    tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=16, projection_dim=32, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
                        latent_channels=4, layers_per_block=1, norm_num_groups=4, sample_size=16)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=4)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                              clip_sample=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


TINY_DEMO_UNET = {
    "sample_size": 16, "in_channels": 3, "out_channels": 3, "layers_per_block": 1, "block_out_channels": [16, 32],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"], "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": 8, "norm_num_groups": 8,
}


def tiny_demo_unet_config(folder: str | Path) -> Path:
    p = Path(folder) / "tiny-demo-unet.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(TINY_DEMO_UNET))
    return p


def demo_models() -> dict:
    """The shipped demo CLIP as `models:` (its text tower conditions the demo model)."""
    clip = {"model": "demo:laion-pipe-demo-clip.json", "pretrained": "demo:demo-clip.safetensors"}
    return {"clip_en": clip, "clip_multi": clip}


def train_workflow(run: str | Path, **train) -> dict:
    """A workflow dict whose train: section trains quickly on CPU (deterministic settings)."""
    base = {
        "name": "t", "resolution": 16, "batch_size": 4, "num_workers": 0, "max_steps": 4, "checkpoint_every": 2,
        "log_every": 1, "validation_every": 0, "learning_rate": 1e-3, "threads": 1, "holdout_fraction": 0.0,
        "shuffle_buffer": 16, "device": "cpu",
    }
    base.update(train)
    return {"name": "train-test", "out": str(run), "models": demo_models(), "train": base}


def write_workflow(path: str | Path, data: dict) -> Path:
    import yaml

    p = Path(path)
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def train_command() -> list[str]:
    """How a user starts the stage: `laion-pipe train` once the CLI has the row, else the stage's
    own `python -m laion_pipe.train` (same options)."""
    from laion_pipe.stages import registry

    names = registry.names() if hasattr(registry, "names") else ()
    return [sys.executable, "-m", "laion_pipe", "train"] if "train" in names else [sys.executable, "-m", "laion_pipe.train"]


def sigkill_training_at(args: list[str], tdir: Path, step: int, poll: float = 0.02) -> int:
    """Start the training console command `args`, SIGKILL it as soon as it has written a
    checkpoint at `step` or later (in `tdir`), and return the step of the last checkpoint it left
    (asserting that it had not finished by then)."""
    import signal
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if any(int(p.name.split("-")[1]) >= step for p in tdir.glob("checkpoint-*")):
                break
            time.sleep(poll)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tdir / "final").exists(), "killed too late: the run had finished"
    return max(int(p.name.split("-")[1]) for p in tdir.glob("checkpoint-*"))


def run_cli(args: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env, **kw)


def run_in_process(args: list[str], capfd) -> subprocess.CompletedProcess:
    """`laion-pipe ARGS` through the CLI's own `main` in this process: the same parsing, checks and
    stage code as `run_cli`, without a fresh interpreter importing torch, diffusers and open_clip
    again (seconds each time). For the repeated runs of a test whose command itself is already run
    in a subprocess elsewhere. torch's thread count is restored afterwards (training sets it)."""
    import torch

    from laion_pipe.cli import main

    threads = torch.get_num_threads()
    env = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}  # as run_cli gives the subprocess
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    capfd.readouterr()
    try:
        rc = main(args)
    finally:
        torch.set_num_threads(threads)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(["laion-pipe", *args], rc, out, err)


def same_image(a, b, tol: int = 2) -> bool:
    """Two generated images are the same draw when no pixel differs by more than `tol` levels.

    A batch of two and a batch of one run the same kernels with different blocking, so float
    sums round differently and a pixel may land one level apart; a different seed moves pixels by
    tens of levels. Exact equality would test the BLAS library, not the sampler.
    """
    import numpy as np

    x, y = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
    return x.shape == y.shape and int(np.abs(x - y).max()) <= tol

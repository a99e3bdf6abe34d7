"""Training throughput of the demo model fed by the loader, against the same model fed batches
already in memory; and what the loader's speed means for a Stable Diffusion v1 run on GPUs.

    python benchmarks/bench_train.py [--steps N] [--rounds R] [--workers W] [--device cpu|cuda]
                                     [--mixed-precision no|bf16|fp16]

Same model (the demo configuration: the 1.4M-parameter pixel-space UNet at 32 px conditioned on
the shipped demo CLIP's text tower, batch 32), same loss and optimizer step (`loop.diffusion_loss`,
AdamW through accelerate), same process, same run:

- "loader-fed": batches come from the training feed (`feed.epoch_batches` over `loader.make_loader`
  with W DataLoader workers, caption dropout and tokenisation on) reading WebDataset shards of
  256 px JPEGs (the demo download's size), epoch after epoch, as the training loop reads them;
- "in-memory" (the baseline): the same number of steps on batches collected from the same loader
  before timing, cycled.

ratio = loader-fed samples/s / in-memory samples/s (issue 11: must >= 0.95: the data feed never
holds the model back). The two alternate for --rounds rounds and each one's best round is kept,
to damp the noise of other load on a shared machine. The loader is warmed (workers started,
first batch read) before its rounds, as a training run's feed is past its start after one step.

Then the loader alone, in this process (no workers), on CPU time: samples per CPU-second (= per
core) at 32 px from 256 px JPEGs and at 512 px from 640 px JPEGs, and from the 512 px figure the
CPU cores per GPU a Stable Diffusion v1 run at 512 px needs to keep one A100 busy at a published
rate: MosaicML's Stable Diffusion 2 base benchmark (same 865M-parameter UNet size as SD v1)
trained 290 images/s on 8 A100s at 512x512 with VAE and CLIP latents precomputed (UNet only),
and says computing them during training takes 1.4x the time (github.com/mosaicml/diffusion,
README "How many GPUs do I need?").
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: no spinning threads against the loader's

import argparse  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from train_fixtures import demo_models, write_dataset  # noqa: E402  (shards as the select stage writes them)

from laion_pipe.config import workflow_from_dict  # noqa: E402

PUBLISHED_A100_512 = 290 / 8  # images/s per A100, SD2-base UNet at 512x512, latents precomputed (MosaicML)
ONLINE_LATENTS_FACTOR = 1.4  # MosaicML: computing VAE and CLIP latents during training takes 1.4x the time


def _workflow(run: Path, resolution: int, workers: int, device: str, precision: str, batch: int):
    return workflow_from_dict({
        "out": str(run),
        "models": demo_models(),
        "train": {"model": "demo", "sources": ["en"], "resolution": resolution, "batch_size": batch, "num_workers": workers,
                  "shuffle_buffer": 256, "holdout_fraction": 0.0, "caption_dropout": 0.1, "random_flip": True,
                  "learning_rate": 1e-3, "device": "cpu" if device == "cpu" else "auto", "mixed_precision": precision},
    })


def _train_side(accelerator, comps, unet, optimizer, batches, steps: int, cfg, gen) -> float:
    """samples/s of `steps` optimizer steps drawing batches from the iterator `batches`."""
    from laion_pipe.train.loop import diffusion_loss

    device = accelerator.device
    n = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        loss = diffusion_loss(comps, unet, batch, gen, cfg, device)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        n += len(batch["key"])
    loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def _cycle(items):
    while True:
        yield from items


def loader_cpu_rate(run: Path, resolution: int, n_batches: int) -> float:
    """Loader samples per CPU-second in this process (decode, resize, crop, tokenise, collate)."""
    import open_clip

    from laion_pipe.train.feed import loader_spec
    from laion_pipe.train.loader import make_loader

    wf = _workflow(run, resolution, 0, "cpu", "no", 32)
    tok = open_clip.get_tokenizer("ViT-B-32")
    loader = make_loader(loader_spec(wf, str(run)), tokenize=tok)
    it = iter(loader)
    next(it)  # the first batch fills the shuffle buffer
    samples, c0 = 0, time.process_time()
    for _ in range(n_batches):
        try:
            samples += len(next(it)["key"])
        except StopIteration:
            break
    return samples / max(time.process_time() - c0, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per round and side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the loader-fed side")
    ap.add_argument("--samples", type=int, default=512, help="samples in the 256 px shards (4 shards)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the training side (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from accelerate import Accelerator

    from laion_pipe.train.checkpoint import RankState
    from laion_pipe.train.feed import epoch_batches, loader_spec
    from laion_pipe.train.models import build_components

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        run = tmp / "run"
        t = time.time()
        write_dataset(run, "en", n=args.samples, shards=4, size=256)
        print(f"shards: {args.samples} samples of 256 px JPEG in 4 shards ({time.time() - t:.1f}s to write)")
        wf = _workflow(run, 32, args.workers, args.device, args.mixed_precision, args.batch_size)
        cfg = wf.train
        accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=args.device == "cpu")
        torch.manual_seed(0)
        comps = build_components(wf)
        optimizer = torch.optim.AdamW(comps.unet.parameters(), lr=cfg.learning_rate)
        unet, optimizer = accelerator.prepare(comps.unet, optimizer)
        for m in comps.frozen:
            m.to(accelerator.device)
        gen = torch.Generator(device=accelerator.device).manual_seed(0)
        params = sum(p.numel() for p in unet.parameters())
        print(f"model: demo UNet {params / 1e6:.2f}M parameters at 32 px, batch {args.batch_size}, device "
              f"{accelerator.device}, mixed precision {args.mixed_precision}, torch threads {torch.get_num_threads()}")

        spec = loader_spec(wf, str(run))
        fed = epoch_batches(spec, RankState(), rank=0, world_size=1, tokenize=comps.tokenize)
        first = next(fed)  # workers started, buffers filled
        memory_spec = loader_spec(wf.model_copy(update={"train": cfg.model_copy(update={"num_workers": 0})}), str(run))
        in_memory = [first] + [b for _, b in zip(range(7), epoch_batches(memory_spec, RankState(), rank=0, world_size=1,
                                                                          tokenize=comps.tokenize))]
        mem = _cycle(in_memory)
        _train_side(accelerator, comps, unet, optimizer, mem, 2, cfg, gen)  # warm-up (allocator, first kernels)
        best = {"loader-fed": 0.0, "in-memory": 0.0}
        for r in range(args.rounds):
            a = _train_side(accelerator, comps, unet, optimizer, fed, args.steps, cfg, gen)
            b = _train_side(accelerator, comps, unet, optimizer, mem, args.steps, cfg, gen)
            best["loader-fed"], best["in-memory"] = max(best["loader-fed"], a), max(best["in-memory"], b)
            print(f"round {r + 1}: loader-fed {a:7.1f} samples/s   in-memory {b:7.1f} samples/s")
        print(f"best: loader-fed {best['loader-fed']:.1f} samples/s, in-memory {best['in-memory']:.1f} samples/s "
              f"({args.workers} loader workers)")

        rate32 = loader_cpu_rate(run, 32, 12)
        big = tmp / "big"
        write_dataset(big, "en", n=128, shards=1, size=640)
        rate512 = loader_cpu_rate(big, 512, 3)
        print(f"loader alone: {rate32:.0f} samples per CPU-second at 32 px from 256 px JPEGs; "
              f"{rate512:.1f} samples per CPU-second at 512 px from 640 px JPEGs")
        need_unet = PUBLISHED_A100_512 / rate512
        need_online = PUBLISHED_A100_512 / ONLINE_LATENTS_FACTOR / rate512
        print(f"SD v1 at 512 px: one A100 trains about {PUBLISHED_A100_512:.0f} images/s (MosaicML, SD2-base UNet, latents "
              f"precomputed; {PUBLISHED_A100_512 / ONLINE_LATENTS_FACTOR:.0f} images/s computing VAE/CLIP latents in "
              f"training): the loader needs {need_online:.2f} CPU cores per GPU ({need_unet:.2f} cores at the "
              "precomputed-latent rate) at this machine's per-core speed")
        print(f"ratio: {best['loader-fed'] / best['in-memory']:.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

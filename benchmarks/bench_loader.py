"""Training loader throughput against plain webdataset decoding of the same shards.

    python benchmarks/bench_loader.py [--images N] [--shards S] [--resolution R] [--batch-size B]
                                      [--workers W] [--rounds K]

Shards are generated in a temporary directory: N JPEGs (the demo's synthetic scenes with noise,
blur and watermarks, then resized to random sides of 256-512 px, quality 95 as download writes
them) with a caption `.txt` and a `.json` carrying the LAION and img2dataset keys, in S shards.

- "loader": `laion_pipe.train.loader.make_loader` with W DataLoader workers, every feature on:
  the five `.json` filters (bounds every generated sample passes, so both sides emit the same
  samples and the filters cost without saving any decode), caption dropout 0.1, tokenization
  with open_clip's `SimpleTokenizer` (its bundled vocabulary, offline), a 1000-sample shuffle
  buffer, random crop and flip, batches of pixel_values / input_ids / caption / key /
  original_size / crop_coords.
- "webdataset" (the baseline): `wds.WebDataset(shards).decode("pil")` then torchvision's
  Resize(R) + CenterCrop(R) + ToTensor + Normalize (diffusers' WebDataset examples), batched in
  the workers, same W workers through `wds.WebLoader`: the plain way to feed these shards.

Both count samples out of the loader, an epoch each, the two interleaved (--rounds) and each
one's best round kept, to damp noise from other load on a shared machine. The loader decodes
JPEGs at reduced size (draft mode) when the target is much smaller than the stored image; the
baseline decodes every pixel. Last line: `ratio: loader samples/s / webdataset samples/s`
(issue 11: must >= 0.9, aim >= 1.0).
"""
from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import torch
import webdataset as wds
from rich.progress import Progress

from laion_pipe.models.demo import synth
from laion_pipe.train.loader import LoaderSpec, SampleFilter, make_loader

FILTERS = SampleFilter(min_similarity=0.28, max_punsafe=0.5, max_pwatermark=0.8, min_aesthetic=4.5,
                       min_original_side=256)


def make_shards(folder: Path, n: int, shards: int, seed: int = 0) -> list[str]:
    """n samples in `shards` tars; every sample passes FILTERS."""
    rng = np.random.default_rng(seed)
    per = -(-n // shards)
    paths = []
    with Progress(transient=True) as bar:
        task = bar.add_task("generating shards", total=n)
        for s in range(shards):
            path = folder / f"{s:05d}.tar"
            with wds.TarWriter(str(path)) as tw:
                for i in range(s * per, min(n, (s + 1) * per)):
                    smp = synth.sample(rng, watermark=0.2, degradation=0.3, size=256)
                    w, h = (int(x) for x in rng.integers(256, 513, size=2))
                    img = smp.image.resize((w, h))
                    buf = io.BytesIO()
                    img.save(buf, format="JPEG", quality=95)
                    key = f"{s:05d}{i:04d}"
                    meta = {"URL": f"http://127.0.0.1/{key}.jpg", "TEXT": smp.caption, "WIDTH": w, "HEIGHT": h,
                            "similarity": 0.3 + 0.1 * float(rng.random()), "punsafe": 0.1, "pwatermark": 0.2,
                            "aesthetic": 5.0, "key": key, "caption": smp.caption, "width": w, "height": h,
                            "original_width": w, "original_height": h, "status": "success"}
                    tw.write({"__key__": key, "jpg": buf.getvalue(), "txt": smp.caption.encode(),
                              "json": orjson.dumps(meta)})
                    bar.advance(task)
            paths.append(str(path))
    return paths


def run_loader(shards: list[str], args, tokenize) -> tuple[int, float]:
    spec = LoaderSpec(sources=tuple(shards), resolution=args.resolution, center_crop=False, random_flip=True,
                      filters=FILTERS, caption_dropout=0.1, batch_size=args.batch_size, seed=0,
                      shuffle_buffer=1000, num_workers=args.workers)
    t0 = time.perf_counter()
    n = sum(len(b["key"]) for b in make_loader(spec, tokenize=tokenize))
    return n, time.perf_counter() - t0


def run_webdataset(shards: list[str], args) -> tuple[int, float]:
    from torchvision import transforms

    tf = transforms.Compose([
        transforms.Resize(args.resolution), transforms.CenterCrop(args.resolution),
        transforms.ToTensor(), transforms.Normalize([0.5], [0.5]),
    ])
    ds = (wds.WebDataset(shards, shardshuffle=False, nodesplitter=wds.single_node_only)
          .decode("pil").to_tuple("jpg", "txt").map_tuple(tf, lambda t: t).batched(args.batch_size))
    loader = wds.WebLoader(ds, batch_size=None, num_workers=args.workers, prefetch_factor=2)
    t0 = time.perf_counter()
    n = sum(len(images) for images, _ in loader)
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    import open_clip

    tokenize = open_clip.tokenizer.SimpleTokenizer()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    try:
        shards = make_shards(tmp, args.images, args.shards)
        mb = sum(Path(s).stat().st_size for s in shards) / 1e6
        print(f"{args.images} JPEGs 256-512 px ({mb:.0f} MB) in {args.shards} shards; resolution {args.resolution}, "
              f"batch {args.batch_size}, {args.workers} workers, {args.rounds} interleaved rounds (best kept)")
        best = {"loader": 0.0, "webdataset": 0.0}
        for r in range(args.rounds):
            for name in ("webdataset", "loader") if r % 2 == 0 else ("loader", "webdataset"):
                n, dt = run_loader(shards, args, tokenize) if name == "loader" else run_webdataset(shards, args)
                if n != args.images:
                    raise SystemExit(f"{name} gave {n} samples, expected {args.images}")
                rate = n / dt
                best[name] = max(best[name], rate)
                print(f"round {r + 1} {name:>10}: {n} samples in {dt:.2f} s = {rate:.0f} samples/s")
        print(f"loader (filters, tokenization, caption dropout, draft decode): {best['loader']:.0f} samples/s")
        print(f"webdataset .decode('pil') + torchvision resize/crop:          {best['webdataset']:.0f} samples/s")
        print(f"ratio: {best['loader'] / best['webdataset']:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

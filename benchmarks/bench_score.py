"""Score stage throughput against the models alone, on real shards it generates.

    python benchmarks/bench_score.py [--images N] [--batch-size B] [--device auto|cpu|cuda] [--rounds R]

Same models (open_clip ViT-B-32, random weights: `pretrained=None`, speed does not depend on
them), same batch size, same process, same run:

- "stage": `score.run` over img2dataset shards (256 px JPEGs of the demo's synthetic scenes,
  unique captions, as download writes them) on an in-process Dask cluster: tar streaming, JPEG
  decode and preprocessing, the models, parquet writing and manifests, all timed.
- "model-only" (the baseline): the same forward passes on pre-made tensors, already on the
  device: the CLIP image tower on preprocessed batches, the text tower on the same captions,
  the NSFW and aesthetic heads on the embeddings, the watermark net on its preprocessed
  batches. Decoding is done before timing.

The stage must not starve the model: ratio = stage images/s / model-only images/s (issue 4: must
>= 0.8, aim >= 0.95). Models are loaded and warmed before either is timed; the two are interleaved
(--rounds) and each one's best round is kept, to damp noise from other load on the machine (on a
shared 2-core box single runs still moved the ratio between 0.86 and 1.4: the "cpu s/image" line,
CPU seconds of this process per image, is the steadier cross-check there). Both run in a non-main
thread (the stage in a Dask worker thread, the baseline in a thread of its own).

The watermark classifier is a tiny timm net (`--watermark-arch`, LAION's is efficientnet_b3a) so
that the ViT-B-32 dominates as the issue asks; NSFW is the zero-shot head on the same CLIP; the
aesthetic MLP reads the same CLIP's 512-d embedding.
"""
from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from shards import Pair, write_shard  # noqa: E402  (the tests' img2dataset shard writer)

from laion_pipe.config import workflow_from_dict  # noqa: E402
from laion_pipe.models.aesthetic import AestheticMLP  # noqa: E402
from laion_pipe.models.demo import synth  # noqa: E402
from laion_pipe.models.watermark import build_watermark_model  # noqa: E402
from laion_pipe.stages import score  # noqa: E402


def make_shards(out: Path, n: int, per_shard: int, seed: int = 0) -> list[Pair]:
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        s = synth.sample(rng, watermark=0.3, degradation=0.3, size=256)
        buf = io.BytesIO()
        s.image.save(buf, format="JPEG", quality=95)  # download's default encode
        pairs.append(Pair(f"{s.caption} #{i}", buf.getvalue()))
    for k in range(0, n, per_shard):
        write_shard(out, "en", k // per_shard, pairs[k : k + per_shard])
    return pairs


def make_workflow(folder: Path, batch_size: int, device: str, wm_arch: str, decode_threads: int | None = None) -> object:
    torch.manual_seed(0)
    wm, aes = folder / "watermark.pt", folder / "aesthetic.pt"
    torch.save(build_watermark_model(wm_arch).state_dict(), wm)
    torch.save(AestheticMLP(512).state_dict(), aes)
    clip = {"model": "ViT-B-32", "pretrained": None}
    return workflow_from_dict(
        {
            "runner": {"progress": False},
            "score": {"batch_size": batch_size, "device": device, "decode_threads": decode_threads},
            "models": {
                "clip_en": clip,
                "clip_multi": clip,
                "nsfw": {"method": "zeroshot", "clip": clip, "weights": None},
                "watermark": {"arch": wm_arch, "weights": str(wm), "image_size": 256},
                "aesthetic": {"clip": clip, "weights": str(aes)},
            },
        }
    )


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def model_only(models: score.ScoreModels, clip_x: list[torch.Tensor], wm_x: list[torch.Tensor], captions: list[str], bs: int) -> float:
    """Seconds for the stage's forward passes over pre-made tensors."""
    sync(models.device)
    t0 = time.perf_counter()
    clip = models.clips[0]
    assert len(clip_x) == len(wm_x) == -(-len(captions) // bs)
    for b, (cx, wx) in enumerate(zip(clip_x, wm_x)):
        txt = clip.encode_texts(captions[b * bs : (b + 1) * bs], batch_size=bs)
        img = clip.encode_images(cx)
        clip.similarity(img, txt)
        models.nsfw.score(img)
        models.aesthetic.score(img)
        models.watermark.score(wx)
    sync(models.device)
    return time.perf_counter() - t0


def in_worker_thread(fn, *args):
    """Run the baseline in a fresh thread, as a Dask worker thread runs the stage: on glibc the main
    thread allocates from another malloc arena than other threads, and that alone moved the
    model's CPU time per batch by about 25% here. Same kind of thread, same allocator."""
    result: list = []
    t = threading.Thread(target=lambda: result.append(fn(*args)), name="bench-model-only")
    t.start()
    t.join()
    return result[0]


def stage(out: Path, wf, client, device: str) -> float:
    shutil.rmtree(out / "scores", ignore_errors=True)
    shutil.rmtree(out / "_state", ignore_errors=True)
    sync(device)
    t0 = time.perf_counter()
    report = score.run(str(out), wf, client)
    elapsed = time.perf_counter() - t0
    assert report.complete and report.done == report.planned, report.failed
    return elapsed


def main() -> None:
    from distributed import Client, LocalCluster

    from laion_pipe.models.devices import resolve_device

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=None, help="default: 64 on CPU, 4096 on a GPU")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 32 on CPU, 256 on a GPU")
    ap.add_argument("--per-shard", type=int, default=None, help="images per shard (default: images / 2, at most 1024)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved timed rounds of each; the best of each is kept")
    ap.add_argument("--watermark-arch", default="test_efficientnet")
    ap.add_argument("--decode-threads", type=int, default=None, help="score.decode_threads (default: the stage's)")
    ap.add_argument("--record", action="store_true",
                    help="write the stage's figure to laion_pipe/unit_costs.json (read by `laion-pipe run --dry-run`): "
                         "on CPU its CPU seconds per 1,000 images (score.cpu_core_seconds_per_thousand_images), "
                         "on a GPU its images/s (score.gpu_images_per_second)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    gpu = device.startswith("cuda")
    n = args.images or (4096 if gpu else 64)
    bs = args.batch_size or (256 if gpu else 32)
    per_shard = args.per_shard or min(1024, max(bs, n // 2))

    tmp = Path(tempfile.mkdtemp(prefix="bench-score-"))
    try:
        t = time.perf_counter()
        pairs = make_shards(tmp / "run", n, per_shard)
        print(f"shards: {n} images in {len(range(0, n, per_shard))} shard(s) of {per_shard}, made in {time.perf_counter() - t:.1f}s")
        wf = make_workflow(tmp, bs, device, args.watermark_arch, args.decode_threads)
        models = score.load_models(wf, "en")  # loaded once, shared by both (in-process cluster)
        print(f"device: {device} ({torch.cuda.get_device_name() if gpu else f'{torch.get_num_threads()} torch threads'}), "
              f"batch size {bs}, CLIP ViT-B-32, watermark {args.watermark_arch}, decode threads {wf.score.decode_threads or 'auto'}")

        # pre-made tensors for the baseline (not timed): the same images through the same transforms
        from PIL import Image

        pre = models.preprocessors()
        decoded = [[p(Image.open(io.BytesIO(pr.image)).convert("RGB")) for p in pre] for pr in pairs]
        clip_x = [torch.stack([d[0] for d in decoded[i : i + bs]]).to(device) for i in range(0, n, bs)]
        wm_x = [torch.stack([d[-1] for d in decoded[i : i + bs]]).to(device) for i in range(0, n, bs)]
        captions = [p.text for p in pairs]

        with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
            in_worker_thread(model_only, models, clip_x[:1], wm_x[:1], captions[:bs], bs)  # warm-up
            stage_s, model_s, stage_cpu, model_cpu = [], [], [], []
            for _ in range(args.rounds):
                c = time.process_time()
                model_s.append(in_worker_thread(model_only, models, clip_x, wm_x, captions, bs))
                model_cpu.append(time.process_time() - c)
                c = time.process_time()
                stage_s.append(stage(tmp / "run", wf, client, device))
                stage_cpu.append(time.process_time() - c)
        stage_rate, model_rate = n / min(stage_s), n / min(model_s)
        print(f"model-only: {model_rate:8.2f} images/s  (best of {args.rounds}: {', '.join(f'{s:.1f}s' for s in model_s)})")
        print(f"stage:      {stage_rate:8.2f} images/s  (best of {args.rounds}: {', '.join(f'{s:.1f}s' for s in stage_s)})")
        # CPU seconds per image (this process, all threads): a cross-check that is less sensitive to
        # other load on a shared machine than wall-clock rates
        print(f"cpu s/image: model-only {min(model_cpu) / n:.3f}, stage {min(stage_cpu) / n:.3f}")
        if args.record:
            from laion_pipe.costs import measured_source, record_unit_cost

            cmd = " ".join(["benchmarks/bench_score.py", *sys.argv[1:]])
            setup = (f"the score stage over {n} generated 256 px images, ViT-B-32 (random weights), batch {bs}, "
                     f"watermark net {args.watermark_arch} (LAION's efficientnet_b3a costs more), best of {args.rounds}")
            if gpu:
                key, value, unit = "score.gpu_images_per_second", stage_rate, "images per second per GPU (the score stage)"
                setup = f"{setup}, on {torch.cuda.get_device_name()}; JPEG decoding on the CPU cores of that machine"
            else:
                key, value, unit = ("score.cpu_core_seconds_per_thousand_images", min(stage_cpu) / n * 1000,
                                    "core-s per 1,000 images scored on CPU")
                setup = f"CPU seconds (all threads of the process) of {setup}, {torch.get_num_threads()} torch threads"
            record_unit_cost(key, value, unit, measured_source(cmd, setup))
            print(f"recorded {key} = {value:.4g} in laion_pipe/unit_costs.json")
            if not gpu:  # what stays on the CPUs when the models run on a GPU: shards, decoding, preprocessing, writing
                feed = max(0.0, min(stage_cpu) - min(model_cpu)) / n * 1000
                record_unit_cost(
                    "score.feed_core_seconds_per_thousand_images", feed,
                    "core-s per 1,000 images of reading, decoding, preprocessing and writing around the models",
                    measured_source(cmd, f"stage CPU s/image minus model-only CPU s/image ({min(stage_cpu) / n:.3f} - "
                                          f"{min(model_cpu) / n:.3f}), {setup}; a difference of two measurements, "
                                          "so noisy on a loaded machine"))
                print(f"recorded score.feed_core_seconds_per_thousand_images = {feed:.4g} in laion_pipe/unit_costs.json")
        print(f"ratio: {stage_rate / model_rate:.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The proof that curation matters: the same model trained on every downloaded pair vs on the curated pairs.

    python benchmarks/bench_curation.py [--pages 150] [--mismatch 0.6] [--steps 530] [--out DIR]

1. A world like the demo's (`laion_pipe.demo.world`), built here: English alt texts only, and
   `--mismatch` of the image references (60% by default) carry a caption that describes another
   scene, as most of Common Crawl's alt texts do not describe their image (LAION's CLIP filter
   removed about 90% of the candidates).
2. The curation stages run once on it (extract .. select on a LocalCluster, the demo workflow and
   the shipped demo models), and select writes two datasets from the same scores:
   - `dataset/all`: every downloaded and scored pair, no thresholds (similarity >= -1);
   - `dataset/curated`: LAION's filter, each subset's similarity threshold of the demo workflow.
3. The demo model (a 1.4M-parameter pixel-space UNet at 32 px on the demo CLIP's text tower) is
   trained twice with the same configuration, seed, steps and batch size, so both see the same
   number of samples: (a) on `all`, (b) on `curated`.
4. Both are evaluated by `laion_pipe.evaluate` on the same prompts and seeds: the captions of the
   pairs (b)'s training held out (curated pairs, so their captions do describe their images),
   and FD-CLIP against those held-out real images.

Judged by something that did not choose the data: the demo CLIP filters the pairs and conditions
the model, so it does not score them here. `laion_pipe.demo.judge` reads each generated image's
foreground and background colour back from its pixels (exact on the world generator's own
renders, tests/test_demo_judge.py) and compares them with the prompt's. Printed per model: the
share of images with both colours right, the chance agreement of a model drawing independently
of its prompt (Cohen's: prompts' label shares times the judged shares) and kappa (chance-corrected
accuracy), foreground / background / shape accuracy separately, then the CLIP metrics for
reference (CLIP score, retrieval with its chance level: the most frequent prompt's share, FD-CLIP
and KID with bootstrap 95% intervals and sample counts). The last line is
`difference: D points, 95% interval [LO, HI]`: curated minus uncurated accuracy in percentage
points, with a paired bootstrap over prompts (2,000 resamples). No ratio: the uncurated model can
sit at chance, where a ratio of accuracies means nothing. The script exits 1 unless LO > 0 and
its premise holds (at least half of the downloaded pairs mismatched).

Dataset keys are numbered per dataset folder, so the held-out part of `all` (chosen by a hash of
the key) is not the same pairs as that of `curated`: (a) may have trained on some of the pairs
the prompts come from. That can only help (a), so the ratio is, if anything, understated.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

CURATION_STAGES = ["extract", "dedup", "download", "score", "select"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    w = ap.add_argument_group("world")
    w.add_argument("--pages", type=int, default=150, help="pages of the world (default 150)")
    w.add_argument("--images-per-page", type=int, default=10)
    w.add_argument("--mismatch", type=float, default=0.6, help="fraction of image references whose caption describes another scene")
    w.add_argument("--side", type=int, default=480, help="side of the served images in pixels")
    t = ap.add_argument_group("training (both models alike)")
    t.add_argument("--steps", type=int, default=530, help="optimiser steps of each training (default 530)")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3, help="learning rate (AdamW, constant after warm-up)")
    t.add_argument("--warmup", type=int, default=20, help="learning-rate warm-up steps")
    t.add_argument("--resolution", type=int, default=32)
    t.add_argument("--holdout", type=float, default=0.2, help="fraction of each dataset held out of training")
    t.add_argument("--workers", type=int, default=0,
                   help="DataLoader workers per training (0: load in the training process; a worker is restarted "
                        "every epoch, and the curated set is a few batches long)")
    t.add_argument("--seed", type=int, default=0)
    e = ap.add_argument_group("evaluation (both models alike)")
    e.add_argument("--n-prompts", type=int, default=128, help="held-out prompts (at most)")
    e.add_argument("--images-per-prompt", type=int, default=2)
    e.add_argument("--eval-steps", type=int, default=25, help="sampling steps")
    e.add_argument("--sampler", default="ddim")
    e.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    ap.add_argument("--out", help="keep the run directory here (default: a temporary one, removed at the end)")
    ap.add_argument("--skip-curation", action="store_true", help="reuse --out's curated datasets (after a run with --out)")
    return ap.parse_args(argv)


def overrides(args: argparse.Namespace) -> list[str]:
    """The demo workflow's settings, changed only where this world needs it."""
    return [
        "runner.progress=false",
        "download.image_size=64",  # the demo CLIP reads 64 px, the model trains at 32 px
        "dedup.rows_per_part=400",
        "select.samples_per_shard=200",
        "select.default_recipes=false",
        "select.presets=[]",
        'select.recipes={"all": {"min_similarity": -1.0, "description": "every downloaded and scored pair, no thresholds"},'
        ' "curated": {"description": "LAION filter: each subset\'s similarity threshold"}}',
    ]


def train_overrides(args: argparse.Namespace, name: str) -> list[str]:
    return [
        "runner.force=true",  # a fresh model every time (never resumed from an earlier run's checkpoint)
        f"train.name={name}",
        "train.model=demo",
        f"train.sources=[{name}]",
        f"train.resolution={args.resolution}",
        f"train.batch_size={args.batch_size}",
        f"train.max_steps={args.steps}",
        f"train.learning_rate={args.lr}",
        "train.lr_scheduler=constant_with_warmup",
        f"train.lr_warmup_steps={args.warmup}",
        f"train.seed={args.seed}",
        f"train.holdout_fraction={args.holdout}",
        f"train.num_workers={args.workers}",
        "train.caption_dropout=0.1",
        "train.shuffle_buffer=500",
        f"train.checkpoint_every={args.steps}",
        "train.validation_every=0",
        "train.log_every=50",
        "train.validation_prompts=[]",
    ]


def eval_overrides(args: argparse.Namespace, name: str) -> list[str]:
    return [
        f"evaluate.model={name}",
        "evaluate.holdout=curated",
        f"evaluate.n_prompts={args.n_prompts}",
        f"evaluate.images_per_prompt={args.images_per_prompt}",
        f"evaluate.steps={args.eval_steps}",
        f"evaluate.sampler={args.sampler}",
        f"evaluate.guidance_scale={args.guidance}",
        f"evaluate.seed={args.seed}",
        "evaluate.batch_size=64",
    ]


def dataset_table(out: Path, name: str) -> pd.DataFrame:
    files = sorted((out / "dataset" / name).glob("*.parquet"))
    if not files:
        sys.exit(f"dataset/{name} is empty: the curation stages kept nothing")
    return pd.concat([pd.read_parquet(f, columns=["URL", "TEXT", "similarity"]) for f in files], ignore_index=True)


def mismatch_share(table: pd.DataFrame, truth: pd.DataFrame) -> float:
    """Share of a dataset's pairs whose caption does not describe the image (the world's truth)."""
    kinds = table.merge(truth[["url", "kind"]].drop_duplicates("url"), left_on="URL", right_on="url", how="left")["kind"]
    return float((kinds == "mismatch").mean())


def curate(args: argparse.Namespace, out: Path) -> pd.DataFrame:
    """Build the world, run extract .. select on it; returns the world's truth table."""
    from laion_pipe.cluster import open_client
    from laion_pipe.demo.run import demo_workflow
    from laion_pipe.demo.world import WorldSpec, build_world
    from laion_pipe.pipeline import run_stages

    spec = WorldSpec(n_pages=args.pages, images_per_page=args.images_per_page, n_wat_files=2, seed=args.seed,
                     kinds={"match": 1.0 - args.mismatch, "mismatch": args.mismatch}, langs={"en": 1.0},
                     sides=(args.side,))
    t = time.perf_counter()
    world = build_world(out / "world", spec)
    try:
        print(f"world: {len(world.truth)} image references on {args.pages} pages, "
              f"{(world.truth.kind == 'mismatch').mean():.0%} with a caption of another scene "
              f"({time.perf_counter() - t:.0f}s)", flush=True)
        wf = demo_workflow(world.wat_paths, str(out), overrides(args))
        t = time.perf_counter()
        with open_client(wf.cluster) as client:
            reports = run_stages(wf, str(out), CURATION_STAGES, client)
        failed = [r.stage for r in reports if r.failed]
        if failed:
            sys.exit(f"curation stages with failed partitions: {failed} (see laion-pipe status {out})")
        print(f"curation: {', '.join(CURATION_STAGES)} in {time.perf_counter() - t:.0f}s", flush=True)
    finally:
        world.stop()
    return world.truth


class Recording:
    """The trained model's generator, keeping every image it draws (the judge reads them all)."""

    def __init__(self, generator):
        self.generator, self.images, self.prompts = generator, [], []
        self.resolution = generator.resolution

    def generate(self, prompts, seeds, **kw):
        images = self.generator.generate(prompts, seeds, **kw)
        self.images += images
        self.prompts += list(prompts)
        return images


def judged(prompts: list[str], images: list) -> dict:
    """Per image: the judge's verdict against the prompt's colours and shape."""
    from laion_pipe.demo.judge import judge, prompt_labels

    rows = []
    for p, im in zip(prompts, images):
        want, got = prompt_labels(p), judge(im)
        rows.append({"prompt": p, "colours": want is not None and (got.colour, got.background) == (want.colour, want.background),
                     "colour": want is not None and got.colour == want.colour,
                     "background": want is not None and got.background == want.background,
                     "shape": want is not None and got.shape == want.shape,
                     "want": (want.colour, want.background) if want else None, "got": (got.colour, got.background)})
    return {"rows": rows}


def chance_agreement(rows: list[dict]) -> float:
    """Cohen's expected agreement for the (colour, background) label: sum over labels of the
    prompts' share times the judged images' share (what a model drawing independently of its
    prompt, with the same output distribution, would get)."""
    from collections import Counter

    n = len(rows)
    want, got = Counter(r["want"] for r in rows), Counter(r["got"] for r in rows)
    return sum(want[k] * got.get(k, 0) for k in want) / (n * n)


def paired_bootstrap(a_rows: list[dict], b_rows: list[dict], n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Accuracy of b minus a in points, and its 95% percentile interval, resampling the prompts
    (with all their images, for both models at once)."""
    import numpy as np

    prompts = sorted({r["prompt"] for r in a_rows})
    idx = {p: i for i, p in enumerate(prompts)}
    ka, kb = np.zeros(len(prompts)), np.zeros(len(prompts))
    ca, cb = np.zeros(len(prompts)), np.zeros(len(prompts))
    for r in a_rows:
        ka[idx[r["prompt"]]] += r["colours"]
        ca[idx[r["prompt"]]] += 1
    for r in b_rows:
        kb[idx[r["prompt"]]] += r["colours"]
        cb[idx[r["prompt"]]] += 1
    diff = 100 * (kb.sum() / cb.sum() - ka.sum() / ca.sum())
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        i = rng.integers(0, len(prompts), len(prompts))
        draws.append(100 * (kb[i].sum() / cb[i].sum() - ka[i].sum() / ca[i].sum()))
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return float(diff), float(lo), float(hi)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from laion_pipe.demo.run import demo_workflow
    from laion_pipe.evaluate import stage as evaluate
    from laion_pipe.models.devices import resolve_device
    from laion_pipe.train.sampling import load_generator
    from laion_pipe.train.stage import run as train

    out = Path(args.out).resolve() if args.out else Path(tempfile.mkdtemp(prefix="bench-curation-"))
    t_all = time.perf_counter()
    try:
        if args.skip_curation:
            truth = pd.read_parquet(out / "world" / "truth.parquet")
        else:
            truth = curate(args, out)
        tables = {name: dataset_table(out, name) for name in ("all", "curated")}
        shares = {name: mismatch_share(tab, truth) for name, tab in tables.items()}
        for name, tab in tables.items():
            print(f"dataset/{name}: {len(tab)} pairs, {shares[name]:.1%} with a caption that does not describe the image")

        models = (("(a) every downloaded pair", "all"), ("(b) curated", "curated"))
        seen = {}
        for label, name in models:  # both first: the prompts are those (b)'s training held out
            t = time.perf_counter()
            report = train(str(out), demo_workflow([], str(out), overrides(args) + train_overrides(args, name)))
            if report.failed:
                sys.exit(f"training {name} failed: {report.failed[0]['error']}")
            summary = json.loads((out / "train" / name / "summary.json").read_text())
            seen[name] = int(summary.get("samples_seen", 0))
            print(f"{label}: trained {summary.get('steps')} steps, {summary.get('samples_seen'):,} samples seen, in "
                  f"{time.perf_counter() - t:.0f}s", flush=True)
        rows, verdicts = {}, {}
        for label, name in models:
            t = time.perf_counter()
            wf_eval = demo_workflow([], str(out), overrides(args) + train_overrides(args, name) + eval_overrides(args, name))
            p = evaluate.plan(str(out), wf_eval)
            rec = Recording(load_generator(p.model_path, device=resolve_device(wf_eval.evaluate.device)))
            rows[name] = (label, evaluate.evaluate(str(out), wf_eval, p, generator=rec))
            verdicts[name] = judged(rec.prompts, rec.images)["rows"]
            print(f"{label}: evaluated in {time.perf_counter() - t:.0f}s", flush=True)

        print()
        print("judged by the pixels (laion_pipe.demo.judge: colours read back from the generated images, no CLIP):")
        print(f"{'model':<28}{'pairs':>7}{'mismatched':>12}{'seen':>8}{'images':>8}{'colours right':>15}{'chance':>8}"
              f"{'kappa':>7}{'fg':>7}{'bg':>7}{'shape':>7}")
        for name, (label, m) in rows.items():
            v = verdicts[name]
            acc = sum(r["colours"] for r in v) / len(v)
            pe = chance_agreement(v)
            kappa = (acc - pe) / (1 - pe) if pe < 1 else float("nan")
            fg, bg, shape = (sum(r[k] for r in v) / len(v) for k in ("colour", "background", "shape"))
            print(f"{label:<28}{len(tables[name]):>7}{shares[name]:>12.1%}{seen[name]:>8,}{len(v):>8}{acc:>15.1%}"
                  f"{pe:>8.1%}{kappa:>7.3f}{fg:>7.1%}{bg:>7.1%}{shape:>7.1%}")
        print()
        print("judged by the run's CLIP (the model that chose the data: for reference only):")
        print(f"{'model':<28}{'CLIP score':>11}{'retrieval':>10}{'chance':>8}{'FD-CLIP [95%]':>26}{'KID [95%]':>30}{'n gen/real':>12}")
        for name, (label, m) in rows.items():
            fd = "n/a" if m["fd_clip"] is None else (f"{m['fd_clip']:.3f} [{m['fd_clip_interval'][0]:.3f}, "
                                                      f"{m['fd_clip_interval'][1]:.3f}]")
            kid = "n/a" if m["kid_clip"] is None else (f"{m['kid_clip']:.4f} [{m['kid_clip_interval'][0]:.4f}, "
                                                        f"{m['kid_clip_interval'][1]:.4f}]")
            print(f"{label:<28}{m['clip_score']:>11.4f}{m['retrieval_top1']:>10.3f}{m['retrieval_chance']:>8.3f}{fd:>26}"
                  f"{kid:>30}{m['n_images']:>6}/{m['n_real']:<5}")
        b = rows["curated"][1]
        print(f"same for both: {args.steps} steps at batch {args.batch_size}, seed {args.seed}, {b['n_images']} images of "
              f"{b['n_prompts']} held-out prompts ({b['n_distinct_prompts']} distinct), {b['n_real']} held-out real images, "
              f"{args.sampler} {args.eval_steps} steps, guidance {args.guidance:g}; total {time.perf_counter() - t_all:.0f}s")
        diff, lo, hi = paired_bootstrap(verdicts["all"], verdicts["curated"], seed=args.seed)
        premise = shares["all"] >= 0.5
        print(f"checks: at least half of the downloaded pairs mismatched: {'yes' if premise else 'NO'}; "
              f"interval above 0: {'yes' if lo > 0 else 'NO'}")
        print(f"difference: {diff:.1f} points, 95% interval [{lo:.1f}, {hi:.1f}]")
        return 0 if premise and lo > 0 else 1
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

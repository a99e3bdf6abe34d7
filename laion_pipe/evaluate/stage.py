"""The evaluate stage: sample a trained model on held-out prompts, score the images with the run's CLIP.

`run(out, wf)` resolves everything it needs before any work (the model folder, the prompts, the
held-out real images' source, the scoring CLIP) and stops with a ConfigError naming the problem
otherwise. Then it generates `images_per_prompt` images per prompt (classifier-free guidance,
the configured diffusers sampler, one seed per image: the same settings give the same images),
encodes images, prompts and held-out real images with the scoring CLIP, and writes

- `RUN/eval/{model}/metrics.json`: clip_score, retrieval_top1 (with its chance level: the most
  frequent prompt's share), fd_clip and kid_clip (each with a bootstrap 95% interval and the
  sample counts), the counts, seeds and sampling settings, the model and CLIP used;
- `RUN/eval/{model}/grid.png`: the first images with their prompts written under them;
- `_state/evaluate/{model}.json`: the runner's manifest, so a rerun with nothing changed is
  skipped and `laion-pipe status` lists it;

and re-renders `RUN/stats/report.html` with an evaluation section. It runs in the calling
process (the model and CLIP are loaded once; there is nothing to partition), so the Dask client
is accepted and ignored.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .. import fsio, runner
from ..config import ConfigError
from ..config.models import ClipModelConfig
from ..runner import Outcome, StageReport
from . import metrics
from .prompts import Holdout, expand, holdout_path, holdout_prompts, read_holdout, read_prompts_file, to_pil

NAME = "evaluate"
EVAL_DIR = "eval"
TRAIN_DIR = "train"
console = Console(stderr=True, soft_wrap=True)


@dataclass
class EvalPlan:
    """Everything `run` needs, resolved and checked before any work."""

    label: str  # RUN/eval/{label}/ and the manifest key
    model_path: str
    prompts: list[str]
    prompts_source: str
    holdout: Holdout | None
    real_sources: tuple[str, ...]
    real_note: str | None  # why FD-CLIP has no real images, when it has none
    clip: ClipModelConfig
    inputs: list[str] = field(default_factory=list)  # files whose identity the fingerprint covers
    data_note: str | None = None  # the model's training data has changed since it was trained


# --- resolving the plan ---------------------------------------------------------------------------


def _train_name(wf: Any) -> str | None:
    train = getattr(wf, "train", None)
    return getattr(train, "name", None)


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or os.sep in spec or "://" in spec or spec.startswith(".")


def _same_place(a: str, b: str) -> bool:
    """Whether two local paths or URLs name the same folder (local ones compared absolute)."""
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.abspath(a) == os.path.abspath(b)


def _model_dir(out: str, spec: str) -> tuple[str, str, str | None]:
    """(label, folder, train name) of a model given as a train name or a folder path. A folder
    inside this run's training folder (`RUN/train/NAME/final`, `RUN/train/NAME/checkpoint-N`)
    is that training's model: its train name comes with it, so its held-out prompts are found
    without `evaluate.holdout`. A folder anywhere else implies no training run."""
    if not _looks_like_path(spec):
        return spec, fsio.join(out, TRAIN_DIR, spec, "final"), spec
    path = spec.rstrip("/")
    p = Path(path)
    inside = (p.name == "final" or p.name.startswith("checkpoint-")) and _same_place(str(p.parent.parent), fsio.join(out, TRAIN_DIR))
    own = p.parent.name if inside else None
    if p.name == "final":
        return p.parent.name, path, own
    if p.name.startswith("checkpoint-"):
        return f"{p.parent.name}-{p.name}", path, own
    return p.name, path, None


def _check_model(path: str, spec: str, out: str) -> None:
    if not fsio.exists(path):
        hint = ("train it first (`laion-pipe train --out RUN`)" if not _looks_like_path(spec)
                else "give a final/ or checkpoint-N/ folder")
        finals = fsio.glob(fsio.join(out, TRAIN_DIR, "*", "final"))
        trained = sorted(f"{TRAIN_DIR}/{Path(f.rstrip('/')).parent.name}" for f in finals)
        raise ConfigError(
            f"evaluate.model: no trained model at {path}: {hint}"
            + (f"; this run has {', '.join(trained)}" if trained else "; this run has no trained model yet")
        )


def _train_sources(out: str, wf: Any, holdout: Holdout) -> tuple[str, ...]:
    """Where a training run's held-out images can be read back: the shards holdout.json lists,
    else the sources of the workflow's train section when it is that run's."""
    if holdout.sources:
        return holdout.sources
    train = getattr(wf, "train", None)
    if train is not None and getattr(train, "name", None) == holdout.name:
        return tuple(train.sources)
    return ()


def plan(out: str, wf: Any) -> EvalPlan:
    """Resolve and check the evaluation; ConfigError (exit 2 in the CLI) on bad input."""
    cfg = wf.evaluate
    spec = cfg.model or _train_name(wf)
    if not spec:
        raise ConfigError("evaluate.model: no model to evaluate: set evaluate.model (a train name or a folder) or train.name")
    label, model_path, own_name = _model_dir(out, spec)
    _check_model(model_path, spec, out)
    holdout_name = cfg.holdout or own_name
    holdout = None
    inputs = [model_path]
    if cfg.prompts:
        prompts = read_prompts_file(cfg.prompts)[: cfg.n_prompts]
        source = f"file {cfg.prompts}"
        inputs.append(cfg.prompts)
        if cfg.holdout:  # asked for by name: it must exist
            holdout = read_holdout(out, cfg.holdout)
        elif holdout_name and fsio.exists(holdout_path(out, holdout_name)):
            holdout = read_holdout(out, holdout_name)  # else FD-CLIP is left out: a prompts file needs no held-out set
    else:
        if not holdout_name:
            raise ConfigError(
                f"evaluate: no held-out prompts for {model_path}: give evaluate.prompts=FILE or "
                "evaluate.holdout=TRAIN_NAME (a training run of this run directory)"
            )
        holdout = read_holdout(out, holdout_name)
        prompts = holdout_prompts(holdout, cfg.n_prompts)
        source = f"held out by train/{holdout_name} ({len(holdout.keys)} samples, fraction {holdout.fraction:g})"
    if holdout is not None:
        inputs.append(holdout_path(out, holdout.name))
    real_sources: tuple[str, ...] = ()
    note = None
    if holdout is None:
        note = "no held-out real images (a prompts file without a training run's holdout.json)"
    else:
        real_sources = _train_sources(out, wf, holdout)
        if not real_sources:
            note = f"train/{holdout.name}/holdout.json does not say which dataset its samples came from"
    clip = cfg.clip or wf.models.clip_en
    return EvalPlan(label, model_path, prompts, source, holdout, real_sources, note, clip, inputs,
                    training_data_note(out, own_name or (holdout.name if holdout else None)))


def training_data_note(out: str, train_name: str | None) -> str | None:
    """Why a training run of this run directory no longer describes the current dataset, or None:
    it finished, but the select partitions it read were redone or removed since (the runner's
    `current` rule), so its model and metrics are of a dataset that is gone."""
    if not train_name:
        return None
    m = runner.read_manifest(out, TRAIN_DIR, train_name)
    if not m or m.get("status") != "done" or any(d.key == train_name for d in runner.current(out, TRAIN_DIR)):
        return None
    return (f"train/{train_name} was trained on a dataset that has changed since (select redid or removed shards it "
            f"read): these metrics describe a model of the old data; `laion-pipe train --out {out}` trains on the current one")


def _identity(path: str) -> list[str]:
    """Cheap identities (size, mtime) of a file or of every file in a folder."""
    fs, p = fsio.fs_and_path(path)
    if fs.isdir(p):
        return [f"{f}={fsio.fingerprint_of(f)}" for f in sorted(fs.find(p))]
    return [f"{path}={fsio.fingerprint_of(path)}"]


def fingerprint(p: EvalPlan, wf: Any) -> str:
    cfg = wf.evaluate.model_dump(mode="json")
    cfg.pop("device", None)  # where it runs does not change what it computes (beyond rounding)
    return runner.fingerprint(cfg, p.clip.model_dump(mode="json"), p.prompts, [_identity(i) for i in p.inputs])


# --- the work -------------------------------------------------------------------------------------


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn(f"[bold]{NAME:>8}[/bold]"), TextColumn("{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled)


def generate(generator: Any, prompts: list[str], seeds: list[int], cfg: Any, progress: Progress) -> list:
    """The images, `cfg.batch_size` at a time (each image's seed fixes its noise, so batching does
    not change them)."""
    task = progress.add_task("generating", total=len(prompts))
    images = []
    for i in range(0, len(prompts), cfg.batch_size):
        batch = slice(i, i + cfg.batch_size)
        images += generator.generate(prompts[batch], seeds[batch], guidance_scale=cfg.guidance_scale,
                                     steps=cfg.steps, sampler=cfg.sampler)
        progress.update(task, advance=len(prompts[batch]))
    return images


def encode_images(clip: Any, images: list, batch_size: int) -> np.ndarray:
    """PIL images -> [N, D] normalised CLIP image embeddings (the CLIP's own preprocessing)."""
    out = []
    for i in range(0, len(images), batch_size):
        out.append(clip.encode_images(torch.stack([clip.preprocess(im) for im in images[i : i + batch_size]])))
    return torch.cat(out).numpy() if out else np.zeros((0, clip.embed_dim), np.float32)


def real_images(out: str, p: EvalPlan, resolution: int, limit: int) -> list:
    """The held-out real images, read back through the training loader (`holdout="only"`) at the
    model's resolution, centre-cropped, no flip, no caption dropout: what training would have
    shown the model had they not been held out."""
    from ..train.loader import LoaderSpec, make_loader

    assert p.holdout is not None
    wanted = set(p.holdout.keys)
    spec = LoaderSpec(sources=p.real_sources, run_dir=out, resolution=resolution, center_crop=True, random_flip=False,
                      caption_dropout=0.0, batch_size=64, seed=0, shuffle_buffer=0,
                      holdout_fraction=p.holdout.fraction, holdout="only", num_workers=0)
    found = []
    for batch in make_loader(spec):
        keep = [i for i, k in enumerate(batch["key"]) if k in wanted]
        found += to_pil(batch["pixel_values"][keep].numpy())
        if len(found) >= limit:
            break
    return found[:limit]


def evaluate(out: str, wf: Any, p: EvalPlan, generator: Any = None) -> dict:
    """Generate, encode, measure and write metrics.json and grid.png; returns the metrics.
    `generator`: anything with `generate(prompts, seeds, **sampling) -> PIL images` and a
    `resolution` (default: the trained model, `train.sampling.load_generator`)."""
    from ..models.clip import load_clip
    from ..models.devices import resolve_device
    from ..train.sampling import load_generator, save_grid

    cfg = wf.evaluate
    device = resolve_device(cfg.device)
    t0 = time.time()
    per_image, seeds = expand(p.prompts, cfg.images_per_prompt, cfg.seed)
    show = bool(getattr(getattr(wf, "runner", None), "progress", True))
    generator = generator or load_generator(p.model_path, device=device)
    with _progress(show) as progress:
        images = generate(generator, per_image, seeds, cfg, progress)
    clip = load_clip(p.clip, device, cache=wf.models.cache_dir)  # the model cache `models fetch` fills
    img_emb = encode_images(clip, images, cfg.batch_size)
    txt_emb = clip.encode_texts(per_image).numpy()
    result: dict[str, Any] = {
        "model": p.label,
        "model_path": p.model_path,
        "clip_score": metrics.clip_score(img_emb, txt_emb),
        "retrieval_top1": metrics.retrieval_top1(img_emb, per_image, txt_emb),
        "retrieval_chance": metrics.retrieval_chance(per_image),
        "fd_clip": None,
        "fd_clip_interval": None,
        "kid_clip": None,
        "kid_clip_interval": None,
        "n_prompts": len(p.prompts),
        "n_distinct_prompts": len(set(p.prompts)),
        "images_per_prompt": cfg.images_per_prompt,
        "n_images": len(images),
        "n_real": 0,
        "seeds": seeds,
        "sampler": cfg.sampler,
        "steps": cfg.steps,
        "guidance_scale": cfg.guidance_scale,
        "resolution": getattr(generator, "resolution", None),
        "prompts_source": p.prompts_source,
        "clip": p.clip.model_dump(mode="json"),
        "device": device,
    }
    if p.real_sources:
        real = real_images(out, p, generator.resolution, cfg.n_real)
        result["n_real"] = len(real)
        if len(real) >= 2:
            real_emb = encode_images(clip, real, cfg.batch_size)
            result["fd_clip"] = metrics.frechet_distance(img_emb, real_emb)
            result["fd_clip_interval"] = metrics.bootstrap(metrics.frechet_distance, img_emb, real_emb, n=cfg.bootstrap)
            result["kid_clip"] = metrics.kernel_inception_distance(img_emb, real_emb)
            result["kid_clip_interval"] = metrics.bootstrap(metrics.kernel_inception_distance, img_emb, real_emb,
                                                            n=cfg.bootstrap)
            result["embedding_dim"] = int(real_emb.shape[1])
        else:
            p.real_note = f"{len(real)} held-out real image(s) readable from {', '.join(p.real_sources)}; FD-CLIP needs 2 or more"
    if result["fd_clip"] is None:
        result["fd_clip_note"] = p.real_note
        console.print(f"[yellow]evaluate[/yellow]: FD-CLIP left out: {p.real_note}")
    result["seconds"] = round(time.time() - t0, 3)
    if p.data_note:
        result["training_data_note"] = p.data_note

    dest = fsio.join(out, EVAL_DIR, p.label)
    save_grid(images[: cfg.grid_images], per_image[: cfg.grid_images], fsio.join(dest, "grid.png"))  # atomic
    fsio.write_json_atomic(fsio.join(dest, "metrics.json"), result)
    return result


def _note_in_metrics(out: str, p: EvalPlan) -> None:
    """An evaluation that is already done still says (or stops saying) that its model's
    training data has changed since: the note is the run's state, not the model's."""
    path = fsio.join(out, EVAL_DIR, p.label, "metrics.json")
    try:
        result = fsio.read_json(path)
    except (FileNotFoundError, ValueError):
        return
    if isinstance(result, dict) and result.get("training_data_note") != p.data_note:
        result.pop("training_data_note", None)
        if p.data_note:
            result["training_data_note"] = p.data_note
        fsio.write_json_atomic(path, result)


def summary_line(label: str, m: dict) -> str:
    """One line of a model's metrics, each with its chance level or interval and sample counts."""
    fd = "n/a"
    if m.get("fd_clip") is not None:
        lo, hi = m.get("fd_clip_interval") or (float("nan"), float("nan"))
        fd = (f"{m['fd_clip']:.4f} [{lo:.4f}, {hi:.4f}], KID {m['kid_clip']:.5f} "
              f"({m['n_images']} generated vs {m['n_real']} real images, {m.get('embedding_dim', '?')}-d)")
    return (f"evaluate {label}: CLIP score {m['clip_score']:.4f}, retrieval top-1 {m['retrieval_top1']:.3f} "
            f"(chance {m['retrieval_chance']:.3f}, {m['n_images']} images of {m['n_distinct_prompts']} distinct prompts), "
            f"FD-CLIP {fd}")


def _rerender_report(out: str) -> None:
    """Add the evaluation to report.html (the stats stage's report, re-rendered from saved files)."""
    try:
        from ..stats.report import render_report
    except ImportError:  # an install without the report renderer
        console.print("evaluate: report.html not updated (this install has no laion_pipe.stats.report.render_report)")
        return
    if not fsio.exists(fsio.join(out, "stats", "stats.json")):
        console.print("evaluate: the stats stage has not run in this run directory; report.html shows the "
                      "training and evaluation only (run `laion-pipe stats` for the dataset statistics)")
    path = render_report(out)
    console.print(f"report: {path}")


def run(out: str, wf: Any, client: Any = None, **_: Any) -> StageReport:
    """The `laion-pipe evaluate` stage. `client` is ignored: evaluation runs in this process."""
    t0 = time.time()
    p = plan(out, wf)
    fp = fingerprint(p, wf)
    report = StageReport(stage=NAME, planned=1)
    force = bool(getattr(getattr(wf, "runner", None), "force", False))
    previous = None if force else runner.done_manifest(out, NAME, p.label, fp)
    if p.data_note:
        console.print(f"[yellow]evaluate[/yellow]: {p.data_note}")
    if previous is not None:
        _note_in_metrics(out, p)
        report.skipped = 1
        report.add(previous)
        console.print(f"evaluate: {p.label} already evaluated with these settings (eval/{p.label}/metrics.json); "
                      "--force redoes it")
    else:
        started = time.time()
        result = evaluate(out, wf, p)
        outcome = Outcome()
        outcome.counts.update(images=result["n_images"], prompts=result["n_prompts"], real_images=result["n_real"])
        outcome.outputs = [f"{EVAL_DIR}/{p.label}/metrics.json", f"{EVAL_DIR}/{p.label}/grid.png"]
        manifest = runner.write_manifest(out, NAME, p.label, fingerprint=fp, inputs=p.inputs, outcome=outcome,
                                         started=started, seconds=round(time.time() - started, 3))
        report.done = 1
        report.add(manifest)
        console.print(summary_line(p.label, result))
    _rerender_report(out)
    report.seconds = round(time.time() - t0, 3)
    return report

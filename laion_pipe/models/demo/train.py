"""Train the demo models on synthetic data and write them where `demo_models_config()` looks.

    python -m laion_pipe.models.demo.train        # the shipped weights (~25 min on 1 CPU thread)
    python -m laion_pipe.models.demo.train --quick --out /tmp/w   # seconds: keeps the script alive

Why train here: no real weights can be downloaded on the machines this project is built on, yet the
demo and the tests need models that really discriminate. The four models are the real
architectures (open_clip CLIP, LAION's NSFW head layout, a timm backbone with LAION's watermark
head, LAION's aesthetic MLP) at toy sizes, trained on `synth` scenes:

1. a tiny CLIP (contrastive loss, captions in en/de/fr/es): a custom open_clip model config with
   a small timm CNN image tower, trained on batches that hold "twin" scenes (see `_clip_pool`);
2. the NSFW head on CLIP image embeddings: skull (the stand-in unsafe concept) vs other shapes;
3. the watermark classifier on 256x256 pixels: overlaid text vs none;
4. the aesthetic MLP on CLIP image embeddings: clean images 7, degraded ones 2..5.

Weights are stored as fp16 safetensors; the CLIP's token-embedding rows of tokens that never occur
in a demo caption are zeroed (they are untrained noise) so the files compress well.
Every part draws from its own seeded random stream, so `--only PART` reproduces that part exactly.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import DEMO_FILES, DEMO_WATERMARK_ARCH
from . import synth

CLIP_NAME = Path(DEMO_FILES["clip_config"]).stem
CLIP_CONFIG = {
    "embed_dim": 64,
    # A small CNN image tower (open_clip's timm tower): a 3-layer ViT learned the colours fast but the
    # shapes slowly (57% shape accuracy after 800 steps); convolutions see edges and texture at once.
    "vision_cfg": {"image_size": 64, "timm_model_name": "test_byobnet", "timm_pool": "avg", "timm_proj": "linear"},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}
FILES = {**DEMO_FILES, "report": "training.json"}
WATERMARK_ARCH = DEMO_WATERMARK_ARCH
"""timm's smallest EfficientNet (~0.1 M parameters, 256 features): same family as LAION's
efficientnet_b3a, under 1 MB with LAION's head."""


@dataclass
class Settings:
    out: Path
    seed: int = 0
    clip_steps: int = 2000
    clip_batch: int = 128
    clip_lr: float = 1e-3
    pool: int = 16384
    head_samples: int = 4000
    head_steps: int = 800
    wm_samples: int = 2400
    wm_steps: int = 400
    wm_batch: int = 32
    threads: int = 1
    log_every: int = 50

    @classmethod
    def quick(cls, out: Path, seed: int = 0) -> "Settings":
        return cls(out, seed, clip_steps=3, clip_batch=16, pool=48, head_samples=48, head_steps=5,
                   wm_samples=16, wm_steps=2, wm_batch=8, log_every=1)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _render_sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Images come in several sizes, so models learn features that survive resizing."""
    return rng.choice([64, 96, 128, 160, 256], size=n)


def _scene_set(rng, n: int, **flags) -> list[synth.Scene]:
    return [synth.random_scene(rng, **flags) for _ in range(n)]


def _images(scenes, rng, transform, sizes=None) -> torch.Tensor:
    sizes = _render_sizes(rng, len(scenes)) if sizes is None else sizes
    return torch.stack([transform(synth.render(s, int(z))) for s, z in zip(scenes, sizes)])


# --- CLIP -------------------------------------------------------------------------------------------


def _clip_pool(n: int, rng: np.random.Generator) -> tuple[list[synth.Scene], dict[int, int]]:
    """`n` random scenes plus, for most of them, a *twin* that differs in one thing: a degraded
    copy, another shape (often the skull), or colour and background swapped. A twin pair in one
    batch is a hard negative: contrastive learning only learns what tells a batch apart, so the
    twins are what make the embedding carry quality, the skull and which colour is the shape's."""
    from dataclasses import replace

    # Every shape equally often, skull included: the CLIP must know the unsafe concept's word too.
    scenes = _scene_set(rng, n, unsafe=1 / len(synth.SHAPES), watermark=0.15, degradation=0.15)
    twin: dict[int, int] = {}
    for i in range(n):
        s, u = scenes[i], rng.random()
        if u < 0.35 and s.degradation is None:
            t = replace(s, degradation=synth.DEGRADATIONS[int(rng.integers(3))], severity=float(rng.uniform(0.4, 1)))
        elif u < 0.8:  # shape twins are the commonest: shape is the hardest thing to learn
            others = [x for x in synth.SHAPES if x != s.shape]
            skull = not s.unsafe and rng.random() < 0.5
            t = replace(s, shape=synth.UNSAFE_SHAPE if skull else others[int(rng.integers(len(others)))])
        elif u < 0.9:
            t = replace(s, colour=s.background, background=s.colour)
        else:
            continue
        twin[i] = len(scenes)
        scenes.append(t)
    return scenes, twin


def _clip_batch(size: int, n: int, twinned: np.ndarray, twin: dict[int, int], rng: np.random.Generator):
    """Two thirds of the batch as twin pairs (same caption language within a pair), half random scenes.
    Degraded twins always name their defect in the caption, other degraded images half the time."""
    pairs = rng.choice(twinned, size=min(size // 3, len(twinned)), replace=False) if len(twinned) else []
    idx = [int(i) for p in pairs for i in (p, twin[int(p)])]
    taken = set(idx)
    for i in rng.permutation(n):
        if len(idx) >= size:
            break
        if int(i) not in taken:
            idx.append(int(i))
            taken.add(int(i))
    langs = rng.choice(synth.LANGS, size=len(idx))
    for k in range(0, 2 * len(pairs), 2):
        langs[k + 1] = langs[k]
    twins = {twin[int(p)] for p in pairs}
    named = [i in twins or rng.random() < 0.5 for i in idx]
    return idx, langs, named


def train_clip(st: Settings, rng: np.random.Generator):
    import open_clip

    cfg_path = st.out / FILES["clip_config"]
    cfg_path.write_text(json.dumps(CLIP_CONFIG, indent=2) + "\n")
    open_clip.add_model_config(cfg_path)
    model, _, preprocess = open_clip.create_model_and_transforms(CLIP_NAME, pretrained=None)
    tokenizer = open_clip.get_tokenizer(CLIP_NAME)

    scenes, twin = _clip_pool(st.pool, rng)
    _log(f"CLIP: rendering a pool of {len(scenes)} scenes ({len(twin)} twin pairs)")
    sizes = _render_sizes(rng, len(scenes))
    for i, j in twin.items():
        sizes[j] = sizes[i]  # a twin differs from its scene in one thing only, not in resolution
    pixels = _images(scenes, rng, preprocess, sizes)
    twinned = np.array(sorted(twin))

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=st.clip_lr
    )
    warmup = max(1, st.clip_steps // 12)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (s + 1) / warmup
        if s < warmup
        else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, st.clip_steps - warmup))),
    )
    loss_fn = open_clip.ClipLoss()
    model.train()
    t0 = time.time()
    for step in range(st.clip_steps):
        idx, langs, named = _clip_batch(st.clip_batch, len(scenes), twinned, twin, rng)
        tokens = tokenizer(
            [scenes[i].quality_caption(lang) if q else scenes[i].caption(lang) for i, lang, q in zip(idx, langs, named)]
        )
        img_f, txt_f, scale = model(pixels[torch.as_tensor(idx)], tokens)[:3]
        loss = loss_fn(img_f, txt_f, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % st.log_every == 0 or step == st.clip_steps - 1:
            _log(f"CLIP step {step + 1}/{st.clip_steps} loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
    model.eval()
    return model, preprocess, tokenizer


def _caption_token_ids(tokenizer) -> torch.Tensor:
    caps = [c for lang in synth.LANGS for c in synth.all_captions(lang)]
    caps += [w for words in synth.QUALITY_WORDS.values() for w in words.values()]
    return torch.unique(tokenizer(caps))


def save_clip(model, tokenizer, path: Path) -> None:
    from safetensors.torch import save_file

    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    used = _caption_token_ids(tokenizer)
    keep = torch.zeros(sd["token_embedding.weight"].shape[0], dtype=torch.bool)
    keep[used] = True
    sd["token_embedding.weight"][~keep] = 0
    save_file(sd, str(path))


@torch.inference_mode()
def _embed(model, pixels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    parts = [model.encode_image(pixels[i : i + batch]) for i in range(0, len(pixels), batch)]
    return F.normalize(torch.cat(parts), dim=-1)


@torch.inference_mode()
def _embed_texts(model, tokenizer, texts: list[str]) -> torch.Tensor:
    return F.normalize(model.encode_text(tokenizer(texts)), dim=-1)


def eval_clip(model, preprocess, tokenizer, rng, n: int = 400) -> dict:
    """Held-out: per language, the share of images whose caption beats a random and a hard
    mismatching caption, and top-1 retrieval among every caption of the language."""
    scenes = _scene_set(rng, n, unsafe=1 / len(synth.SHAPES), watermark=0.15, degradation=0.2)
    img = _embed(model, _images(scenes, rng, preprocess))
    res = {}
    for lang in synth.LANGS:
        pos = _embed_texts(model, tokenizer, [s.caption(lang) for s in scenes])
        neg = _embed_texts(model, tokenizer, [synth.mismatched_caption(rng, s, lang) for s in scenes])
        hard = _embed_texts(model, tokenizer, [synth.mismatched_caption(rng, s, lang, hard=True) for s in scenes])
        caps = synth.all_captions(lang)
        allt = _embed_texts(model, tokenizer, caps)
        top1 = (img @ allt.T).argmax(dim=1)
        truth = torch.tensor([caps.index(s.caption(lang)) for s in scenes])
        p = (img * pos).sum(-1)
        res[lang] = {
            "beats_random": float((p > (img * neg).sum(-1)).float().mean()),
            "beats_hard": float((p > (img * hard).sum(-1)).float().mean()),
            "top1": float((top1 == truth).float().mean()),
        }
    return res


# --- heads on CLIP embeddings -----------------------------------------------------------------------


def _fit(model, x, y, loss_fn, steps: int, lr: float, rng, batch: int = 128):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    for step in range(steps):
        idx = torch.as_tensor(rng.choice(len(x), size=min(batch, len(x)), replace=False))
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.item())


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC: the chance that a positive outscores a negative (ties count half)."""
    scores, pos = np.asarray(scores, dtype=float), np.asarray(labels).astype(bool)
    a, b = scores[pos][:, None], scores[~pos][None, :]
    return float(((a > b).sum() + 0.5 * (a == b).sum()) / (a.size * b.size)) if a.size and b.size else float("nan")


def train_nsfw(st: Settings, clip_model, preprocess, rng):
    from ..nsfw import LaionNsfwHead

    scenes = _scene_set(rng, st.head_samples, unsafe=0.5, watermark=0.15, degradation=0.2)
    emb = _embed(clip_model, _images(scenes, rng, preprocess))
    y = torch.tensor([float(s.unsafe) for s in scenes])
    d = emb.shape[1]
    head = LaionNsfwHead([d, 64, 512, 256, 1])  # LAION's L/14 layout on the demo embedding size
    head.norm.mean.copy_(emb.mean(0))
    head.norm.variance.copy_(emb.var(0))
    n_train = int(0.8 * len(y))
    loss = _fit(head, emb[:n_train], y[:n_train], F.binary_cross_entropy, st.head_steps, 1e-3, rng)
    with torch.inference_mode():
        auc = _auc(head(emb[n_train:]).numpy(), y[n_train:].numpy())
    _log(f"NSFW head: loss {loss:.3f}, held-out AUC {auc:.3f}")
    return head, {"loss": loss, "heldout_auc": auc}


def train_aesthetic(st: Settings, clip_model, preprocess, rng):
    from ..aesthetic import AestheticMLP

    scenes = _scene_set(rng, st.head_samples, unsafe=1 / len(synth.SHAPES), watermark=0.15, degradation=0.5)
    emb = _embed(clip_model, _images(scenes, rng, preprocess))
    y = torch.tensor([s.aesthetic for s in scenes])
    mlp = AestheticMLP(emb.shape[1])
    with torch.no_grad():  # start at the mean rating: fewer steps spent learning the offset
        mlp.layers[7].bias.fill_(float(y.mean()))
    n_train = int(0.8 * len(y))
    loss = _fit(mlp, emb[:n_train], y[:n_train], F.mse_loss, st.head_steps, 1e-3, rng)
    with torch.inference_mode():
        pred = mlp(emb[n_train:]).numpy()
    clean = np.array([s.degradation is None for s in scenes[n_train:]])
    auc = _auc(pred, clean)
    _log(f"aesthetic: mse {loss:.3f}, held-out AUC clean>degraded {auc:.3f}")
    return mlp, {"mse": loss, "heldout_auc_clean_vs_degraded": auc}


def train_watermark(st: Settings, rng):
    from ..watermark import build_watermark_model, watermark_transform

    tf = watermark_transform(256)
    scenes = _scene_set(rng, st.wm_samples, unsafe=1 / len(synth.SHAPES), watermark=0.5, degradation=0.15)
    _log(f"watermark: rendering {len(scenes)} images")
    x = _images(scenes, rng, tf).half()  # fp16 storage: 2400 x 256^2 images stay under 1 GB
    y = torch.tensor([0 if s.watermarked else 1 for s in scenes])  # class 0 = watermark, as LAION
    model = build_watermark_model(WATERMARK_ARCH)
    n_train = int(0.85 * len(y))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=max(2, st.wm_steps))
    model.train()
    t0 = time.time()
    for step in range(st.wm_steps):
        idx = torch.as_tensor(rng.choice(n_train, size=min(st.wm_batch, n_train), replace=False))
        loss = F.cross_entropy(model(x[idx].float()), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % st.log_every == 0 or step == st.wm_steps - 1:
            _log(f"watermark step {step + 1}/{st.wm_steps} loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
    model.eval()
    with torch.inference_mode():
        p = torch.cat([model(x[i : i + 64].float()).softmax(-1)[:, 0] for i in range(n_train, len(y), 64)]).numpy()
    auc = _auc(p, (y[n_train:] == 0).numpy())
    _log(f"watermark: held-out AUC {auc:.3f}")
    return model, {"loss": float(loss.item()), "heldout_auc": auc}


def _save_fp16(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    save_file(
        {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in module.state_dict().items()},
        str(path),
    )


PARTS = ("clip", "nsfw", "aesthetic", "watermark")


def _load_shipped_clip(out: Path):
    """The CLIP already in `out`, through the package's own loader (for retraining heads only)."""
    from ...config.models import ClipModelConfig
    from ..clip import load_clip

    scorer = load_clip(ClipModelConfig(model=str(out / FILES["clip_config"]), pretrained=str(out / FILES["clip"])))
    return scorer.model, scorer.preprocess, scorer.tokenizer


def train_all(st: Settings, parts: tuple[str, ...] = PARTS) -> dict:
    """Train the demo models named in `parts` into `st.out` (heads without "clip" use the CLIP
    already there) and return the training report, also written to `st.out/training.json`."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; known: {PARTS}")
    torch.set_num_threads(st.threads)

    def rng(part: str) -> np.random.Generator:
        """Each part its own random stream: retraining one part alone reproduces it exactly."""
        torch.manual_seed(st.seed * 1000 + PARTS.index(part))
        return np.random.default_rng([st.seed, PARTS.index(part)])

    st.out.mkdir(parents=True, exist_ok=True)
    report_path = st.out / FILES["report"]
    report = json.loads(report_path.read_text()) if report_path.is_file() and set(parts) != set(PARTS) else {}
    t0 = time.time()
    if "clip" in parts:
        model, preprocess, tokenizer = train_clip(st, rng("clip"))
        save_clip(model, tokenizer, st.out / FILES["clip"])
    # Evaluation and heads use the CLIP as shipped (fp16-rounded, loaded by the package's loader).
    model, preprocess, tokenizer = _load_shipped_clip(st.out)
    if "clip" in parts:
        held_out = np.random.default_rng([st.seed, 99])
        metrics = eval_clip(model, preprocess, tokenizer, held_out, n=400 if st.clip_steps > 50 else 16)
        _log(f"CLIP held-out: {metrics}")
        report["clip"] = {"config": CLIP_CONFIG, "steps": st.clip_steps, "batch": st.clip_batch, "heldout": metrics}
    if "nsfw" in parts:
        nsfw, report["nsfw"] = train_nsfw(st, model, preprocess, rng("nsfw"))
        _save_fp16(nsfw, st.out / FILES["nsfw"])
    if "aesthetic" in parts:
        aes, report["aesthetic"] = train_aesthetic(st, model, preprocess, rng("aesthetic"))
        _save_fp16(aes, st.out / FILES["aesthetic"])
    if "watermark" in parts:
        wm, metrics = train_watermark(st, rng("watermark"))
        report["watermark"] = {"arch": WATERMARK_ARCH, "steps": st.wm_steps, **metrics}
        _save_fp16(wm, st.out / FILES["watermark"])
    for f in FILES.values():
        if (st.out / f).exists():
            (st.out / f).chmod(0o644)
    report.update(
        seed=st.seed,
        torch=torch.__version__,
        bytes={k: (st.out / f).stat().st_size for k, f in FILES.items() if k != "report" and (st.out / f).exists()},
    )
    report.setdefault("seconds", {})[",".join(parts)] = round(time.time() - t0, 1)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    report_path.chmod(0o644)
    _log(f"done in {time.time() - t0:.0f}s, {sum(report['bytes'].values()) / 1e6:.1f} MB")
    return report


def main(argv: list[str] | None = None) -> None:
    default_out = Path(__file__).with_name("weights")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=default_out, help=f"output folder (default: {default_out})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a few steps of everything (smoke test)")
    ap.add_argument("--clip-steps", type=int, help="override the CLIP's training steps")
    ap.add_argument("--pool", type=int, help="override the number of CLIP training scenes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared: keep it small)")
    ap.add_argument(
        "--only", default=",".join(PARTS), help=f"comma-separated parts to (re)train, of {','.join(PARTS)}"
    )
    args = ap.parse_args(argv)
    st = Settings.quick(args.out, args.seed) if args.quick else Settings(args.out, args.seed)
    st.threads = args.threads
    if args.clip_steps:
        st.clip_steps = args.clip_steps
    if args.pool:
        st.pool = args.pool
    train_all(st, tuple(p.strip() for p in args.only.split(",") if p.strip()))


if __name__ == "__main__":
    main()

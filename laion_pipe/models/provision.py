"""`laion-pipe models fetch` and `laion-pipe models check`: weights for machines without internet.

Clusters often have no internet on their compute nodes. `fetch` lists every file a workflow's
models need (CLIP checkpoints behind open_clip tags, head weights, the config and tokenizer files of
Hugging Face text towers), downloads the missing ones into the model cache (`models.cache_dir`),
checks pinned sha256s and records what it got in the cache's `manifest.json`. Scoring on the
nodes then reads that folder and downloads nothing. `check` says which of those files are there,
then loads every model and runs it on a small test picture, printing what each computed, so a
broken or missing weight shows before a cluster job starts rather than inside one.

Both take the models from a workflow file (default: the built-in LAION-5B models).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from . import weights as W

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE = 0, 1, 2


@dataclass
class Need:
    """One thing a workflow's models need: a weights file (`file`; `clip` for a CLIP checkpoint,
    which fetch also converts when it is a TorchScript archive), a Hugging Face text tower's
    config and tokenizer files (`hf-files`, location = repo id) or an `hf-hub:` open_clip model."""

    location: str
    kind: str
    sha256: str | None = None
    roles: list[str] = field(default_factory=list)

    @property
    def is_url(self) -> bool:
        return self.kind in ("file", "clip") and W.is_url(self.location)


def clip_configs(wf: Any) -> Iterator[tuple[str, Any]]:
    """(config key, ClipModelConfig) of every CLIP the workflow loads."""
    m = wf.models
    yield "models.clip_en", m.clip_en
    yield "models.clip_multi", m.clip_multi
    if m.nsfw is not None:
        yield "models.nsfw.clip", m.nsfw.clip
    if m.aesthetic is not None:
        yield "models.aesthetic.clip", m.aesthetic.clip
    for section, key in (("evaluate", "clip"), ("train", "text_encoder")):
        cfg = getattr(getattr(wf, section, None), key, None)
        if cfg is not None:
            yield f"{section}.{key}", cfg


def needs(wf: Any) -> list[Need]:
    """Everything `wf`'s models load, one entry per distinct file or repo."""
    from ..config import ConfigError
    from .clip import clip_source

    found: dict[tuple[str, str], Need] = {}

    def add(role: str, location: str, kind: str, sha256: str | None = None) -> None:
        need = found.setdefault((kind, location), Need(location, kind, sha256))
        need.roles.append(role)
        need.sha256 = need.sha256 or sha256

    for role, cfg in clip_configs(wf):
        try:
            src = clip_source(cfg)
        except ValueError as e:
            raise ConfigError(f"{role}: {e}") from None
        if cfg.model.startswith("hf-hub:"):
            add(role, cfg.model, "hf-hub")
        if src.weights:
            add(role, src.weights, "clip", src.sha256)
        for repo in src.hf_repos:
            add(role, repo, "hf-files")
    m = wf.models
    if m.nsfw is not None and m.nsfw.method == "mlp" and m.nsfw.weights:
        add("models.nsfw.weights", m.nsfw.weights, "file", m.nsfw.sha256)
    if m.watermark is not None and m.watermark.weights:
        add("models.watermark.weights", m.watermark.weights, "file", m.watermark.sha256)
    if m.aesthetic is not None and m.aesthetic.weights:
        add("models.aesthetic.weights", m.aesthetic.weights, "file", m.aesthetic.sha256)
    return list(found.values())


# --- where a need lives -----------------------------------------------------------------------------


def local_path(need: Need, cache) -> Path | None:
    """Where `need` is on this machine (None: not there)."""
    from .clip import hf_files_dir

    if need.kind == "hf-files":
        d = hf_files_dir(need.location, cache)
        return d if (d / "config.json").is_file() else None
    if need.kind == "hf-hub":
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(need.location.removeprefix("hf-hub:"), cache_dir=str(W.cache_dir(cache) / "open_clip"),
                                          local_files_only=True))
        except Exception:
            return None
    if need.is_url:
        p = W.cache_path(need.location, cache)
        return p if p.is_file() else None
    p = Path(need.location.removeprefix("file://")).expanduser()
    return p if p.is_file() else None


# --- fetch ------------------------------------------------------------------------------------------


@dataclass
class Fetched:
    need: Need
    status: str  # downloaded | cached | local | refused | failed
    path: str = ""
    sha256: str = ""
    detail: str = ""


def _progress_bar(console: Console):
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    console=console, transient=True)


def _fetch_file(need: Need, cache, progress) -> Fetched:
    from .clip import state_dict_file

    if not need.is_url:
        p = local_path(need, cache)
        if p is None:
            return Fetched(need, "failed", detail=f"local file not found: {need.location}")
        got = W.sha256_of(p)
        if need.sha256 and got != need.sha256.lower():
            return Fetched(need, "refused", str(p), got, f"sha256 {got} is not the pinned {need.sha256}")
        return Fetched(need, "local", str(p), got)
    target = W.cache_path(need.location, cache)
    status = "cached"
    if target.is_file():
        got = W.sha256_of(target)
        if need.sha256 and got != need.sha256.lower():
            return Fetched(need, "refused", str(target), got,
                           f"the cached file's sha256 {got} is not the pinned {need.sha256}: delete it and fetch again")
    else:
        task = progress.add_task(W.file_name(need.location), total=None)
        try:
            got = W.download(need.location, target, need.sha256,
                             progress=lambda done, total: progress.update(task, completed=done, total=total))
        except W.ChecksumMismatch as e:
            return Fetched(need, "refused", detail=str(e))
        except Exception as e:
            return Fetched(need, "failed", detail=f"{type(e).__name__}: {e}")
        finally:
            progress.remove_task(task)
        status = "downloaded"
    W.record(need.location, target, got, cache)
    if need.kind == "clip":  # OpenAI's TorchScript archives: convert here, nodes may not write the cache
        converted = state_dict_file(str(target))
        if converted != str(target):
            W.record(f"{need.location}#state_dict", converted, W.sha256_of(converted), cache)
    return Fetched(need, status, str(target), got)


def _fetch_hf_files(need: Need, cache, progress) -> Fetched:
    from .clip import HF_TEXT_FILES, hf_endpoint, hf_files_dir

    d = hf_files_dir(need.location, cache)
    got, downloaded = [], 0
    for name in HF_TEXT_FILES:
        url, target = f"{hf_endpoint()}/{need.location}/resolve/main/{name}", d / name
        if target.is_file():
            got.append(name)
            continue
        try:
            sha = W.download(url, target)
        except FileNotFoundError:
            continue  # optional: not every tokenizer has every file
        except Exception as e:
            return Fetched(need, "failed", str(d), detail=f"{url}: {type(e).__name__}: {e}")
        W.record(url, target, sha, cache)
        got.append(name)
        downloaded += 1
    if "config.json" not in got:
        return Fetched(need, "failed", str(d), detail=f"{need.location} has no config.json at {hf_endpoint()}")
    return Fetched(need, "downloaded" if downloaded else "cached", str(d), detail=", ".join(got))


def _fetch_hf_hub(need: Need, cache) -> Fetched:
    from huggingface_hub import snapshot_download

    try:
        p = snapshot_download(need.location.removeprefix("hf-hub:"), cache_dir=str(W.cache_dir(cache) / "open_clip"),
                              allow_patterns=["open_clip_config.json", "open_clip_model.safetensors",
                                              "open_clip_pytorch_model.bin"])
    except Exception as e:
        return Fetched(need, "failed", detail=f"{type(e).__name__}: {e}")
    return Fetched(need, "downloaded", p)


def fetch(wf: Any, cache=None, console: Console | None = None) -> list[Fetched]:
    """Download every weight `wf` needs into the cache (skipping what is there), checking pins."""
    console = console or Console(stderr=True)
    results = []
    with _progress_bar(console) as progress:
        for need in needs(wf):
            if need.kind == "hf-files":
                results.append(_fetch_hf_files(need, cache, progress))
            elif need.kind == "hf-hub":
                results.append(_fetch_hf_hub(need, cache))
            else:
                results.append(_fetch_file(need, cache, progress))
    return results


def main_fetch(wf: Any, cache=None) -> int:
    out, err = Console(), Console(stderr=True)
    root = W.cache_dir(cache)
    err.print(f"model cache: {root}")
    results = fetch(wf, cache, err)
    table = Table("used by", "weights", "status", "sha256", "size")
    for r in results:
        size = f"{Path(r.path).stat().st_size / 1e6:,.1f} MB" if r.path and Path(r.path).is_file() else ""
        pin = "" if not r.sha256 else r.sha256[:16] + ("… = pin" if r.need.sha256 else "" if r.status == "local" else "… recorded")
        status = r.status if r.status in ("downloaded", "cached", "local") else f"[red]{r.status}[/red]"
        table.add_row("\n".join(r.need.roles), r.need.location, status, pin, size)
    out.print(table)
    bad = [r for r in results if r.status in ("refused", "failed")]
    for r in bad:
        err.print(f"[red]{r.status}:[/red] {r.need.location} ({', '.join(r.need.roles)}): {r.detail}")
    if bad:
        return EXIT_INCOMPLETE
    err.print(f"everything this workflow's models need is in {root} (manifest: {root / W.MANIFEST}); on machines "
              f"without internet set models.cache_dir (or LAION_PIPE_CACHE) to this folder")
    return EXIT_OK


# --- check ------------------------------------------------------------------------------------------


def check_picture():
    """The check's small test image and two captions: a scene of the demo world, drawn by
    `laion_pipe.models.demo.synth` (so it ships with the package as code), its own caption and
    another scene's."""
    import numpy as np

    from .demo import synth

    rng = np.random.default_rng(18)
    scene = synth.random_scene(rng)
    return synth.render(scene, 224), scene.caption("en"), synth.mismatched_caption(rng, scene, "en")


def missing(wf: Any, cache=None) -> list[tuple[Need, str]]:
    """Needs that are not on this machine, with where they were looked for."""
    from .clip import hf_files_dir

    out = []
    for need in needs(wf):
        if local_path(need, cache) is not None:
            continue
        if need.kind == "hf-files":
            where = str(hf_files_dir(need.location, cache))
        elif need.is_url:
            where = str(W.cache_path(need.location, cache))
        else:
            where = need.location
        out.append((need, where))
    return out


def run_models(wf: Any, cache=None, device: str = "cpu") -> list[tuple[str, str, str]]:
    """Load every model of `wf` from local files and run it on the test picture: rows of
    (config key, model, what it computed)."""
    import torch

    from .aesthetic import load_aesthetic
    from .clip import cached_clip, clip_source
    from .nsfw import load_nsfw
    from .watermark import load_watermark

    image, caption, other = check_picture()
    rows, embeddings = [], {}
    torch.set_grad_enabled(False)

    def clip_emb(cfg):
        key = (cfg.model, cfg.pretrained, cfg.sha256)
        if key not in embeddings:
            clip = cached_clip(cfg, device, cache=cache)
            embeddings[key] = (clip, clip.encode_images(clip.preprocess(image)))
        return embeddings[key]

    by_clip: dict[tuple, list[str]] = {}
    for role, cfg in clip_configs(wf):
        by_clip.setdefault((cfg.model, cfg.pretrained, cfg.sha256), []).append(role)
    for roles in by_clip.values():
        cfg = dict(clip_configs(wf))[roles[0]]
        clip, emb = clip_emb(cfg)
        src = clip_source(cfg)
        sims = clip.similarity(emb.repeat(2, 1), clip.encode_texts([caption, other]))
        arch = f"{src.name}" + (f" + {src.tag}" if src.tag else "") + (" (QuickGELU)" if src.quick_gelu else " (GELU)")
        rows.append((", ".join(roles), arch,
                     f"similarity {sims[0]:.4f} to its caption {caption!r}, {sims[1]:.4f} to {other!r}"))
    m = wf.models
    if m.nsfw is not None:
        clip, emb = clip_emb(m.nsfw.clip)
        scorer = load_nsfw(m.nsfw, clip, cache)
        what = type(scorer.head).__name__ if scorer.head is not None else "zero-shot prompts"
        rows.append(("models.nsfw", f"{m.nsfw.method}: {what}", f"punsafe {float(scorer.score(emb)[0]):.4f}"))
    if m.watermark is not None:
        wm = load_watermark(m.watermark, device, half=False, cache=cache)
        p = float(wm.score(wm.preprocess(image).unsqueeze(0))[0])
        rows.append(("models.watermark", m.watermark.arch, f"pwatermark {p:.4f}"))
    if m.aesthetic is not None:
        clip, emb = clip_emb(m.aesthetic.clip)
        scorer = load_aesthetic(m.aesthetic, clip, cache)
        rows.append(("models.aesthetic", type(scorer.model).__name__, f"aesthetic {float(scorer.score(emb)[0]):.4f}"))
    return rows


def main_check(wf: Any, cache=None, device: str = "cpu") -> int:
    out, err = Console(), Console(stderr=True)
    root = W.cache_dir(cache)
    absent = missing(wf, cache)
    if absent:
        for need, where in absent:
            err.print(f"[red]missing:[/red] {need.location} ({', '.join(need.roles)}): not at {where}")
        err.print(f"[red]error:[/red] {len(absent)} weight file(s) of this workflow are not on this machine "
                  f"(model cache {root}); run `laion-pipe models fetch` with the same workflow where there is "
                  "internet, and set models.cache_dir (or LAION_PIPE_CACHE) to the folder it fills")
        return EXIT_USAGE
    bad = []
    recorded = W.read_manifest(cache)["files"]
    for need in needs(wf):
        p = local_path(need, cache)
        want = (need.sha256 or "").lower() or recorded.get(need.location, {}).get("sha256") if need.is_url else need.sha256
        if want and p is not None and p.is_file() and W.sha256_of(p) != want.lower():
            what = "pinned" if need.sha256 else "recorded when it was fetched"
            bad.append(f"{p}: sha256 is not the {what} {want} ({', '.join(need.roles)})")
    for line in bad:
        err.print(f"[red]checksum:[/red] {line}")
    if bad:
        return EXIT_USAGE
    try:
        rows = run_models(wf, cache, device)
    except (ValueError, OSError) as e:
        err.print(f"[red]error:[/red] a model does not load: {e}")
        return EXIT_USAGE
    table = Table("config key", "model", f"on the test picture ({device})")
    for row in rows:
        table.add_row(*row)
    out.print(table)
    err.print(f"all {len(rows)} models load and run (model cache {root})")
    return EXIT_OK


def cache_from(wf: Any, override: str | None) -> str | None:
    """--cache-dir, else the workflow's models.cache_dir (None: the default cache)."""
    return override or wf.models.cache_dir or None


def main_models(action: str, workflow: str | None, overrides: list[str], cache_dir: str | None, device: str) -> int:
    """The `laion-pipe models fetch|check` entry point."""
    from ..config import load_workflow
    from .devices import resolve_device

    wf = load_workflow(workflow, overrides)
    cache = cache_from(wf, cache_dir)
    if action == "fetch":
        return main_fetch(wf, cache)
    return main_check(wf, cache, resolve_device(device))


"""Write small download shards in img2dataset's layout, for tests of the stages after download.

`images/{subset}/NNNNN.tar` holds `{key}.jpg`, `{key}.txt`, `{key}.json` for each downloaded pair;
`NNNNN.parquet` has one row per pair of the shard, downloaded or not, with img2dataset's columns
(`key, status, error_message, width, height, original_width, original_height, sha256`) plus ours
(`uid, url, text, page_url, language, language_score, subset`). Keys follow img2dataset: the shard
number (5 digits) then the row index (4 digits).
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image, ImageDraw

DOWNLOAD_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("original_width", pa.int64()),
        ("original_height", pa.int64()),
        ("sha256", pa.string()),
        ("uid", pa.string()),
        ("url", pa.string()),
        ("text", pa.string()),
        ("page_url", pa.string()),
        ("language", pa.string()),
        ("language_score", pa.float32()),
        ("subset", pa.string()),
    ]
)

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 40),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}


def draw_image(colour: str = "red", shape: str = "circle", background: str = "white", size: int = 64) -> Image.Image:
    """A synthetic picture: one coloured shape on a plain background."""
    img = Image.new("RGB", (size, size), COLOURS[background])
    d = ImageDraw.Draw(img)
    box = (size // 5, size // 5, 4 * size // 5, 4 * size // 5)
    if shape == "circle":
        d.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        d.rectangle(box, fill=COLOURS[colour])
    else:
        d.polygon([(size // 2, size // 5), (size // 5, 4 * size // 5), (4 * size // 5, 4 * size // 5)], fill=COLOURS[colour])
    return img


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass
class Pair:
    """One row of a download shard. `image` None = a failed download (no tar member); bytes that
    are not an image make a 'success' row whose image cannot be decoded."""

    text: str
    image: Image.Image | bytes | None
    url: str = ""
    uid: str = ""
    language: str = "en"
    language_score: float = 0.99
    original_size: tuple[int, int] | None = None  # (width, height) before download's resize
    error_message: str = "failed_to_download: 404"
    extra: dict = field(default_factory=dict)


def write_shard(root: str | Path, subset: str, shard: int, pairs: list[Pair], ext: str = "jpg") -> tuple[Path, Path]:
    """Write `{root}/images/{subset}/{shard:05d}.tar` and `.parquet`; returns both paths."""
    folder = Path(root) / "images" / subset
    folder.mkdir(parents=True, exist_ok=True)
    tar_path, pq_path = folder / f"{shard:05d}.tar", folder / f"{shard:05d}.parquet"
    rows = []
    with open(tar_path, "wb") as f, wds.TarWriter(f, encoder=False) as tw:
        for i, p in enumerate(pairs):
            key = f"{shard:05d}{i:04d}"
            url = p.url or f"http://127.0.0.1/{subset}/{key}.{ext}"
            uid = p.uid or hashlib.sha256(f"{url}\t{p.text}".encode()).hexdigest()[:32]
            row = {
                "key": key,
                "status": "success",
                "error_message": None,
                "width": None,
                "height": None,
                "original_width": None,
                "original_height": None,
                "sha256": None,
                "uid": uid,
                "url": url,
                "text": p.text,
                "page_url": f"http://127.0.0.1/page/{key}.html",
                "language": p.language,
                "language_score": p.language_score,
                "subset": subset,
            }
            if p.image is None:
                row["status"], row["error_message"] = "failed_to_download", p.error_message
                rows.append(row)
                continue
            if isinstance(p.image, Image.Image):
                data = jpeg_bytes(p.image) if ext == "jpg" else _encode(p.image, ext)
                w, h = p.image.size
            else:
                data, (w, h) = p.image, (64, 64)
            ow, oh = p.original_size or (w, h)
            row.update(width=w, height=h, original_width=ow, original_height=oh, sha256=hashlib.sha256(data).hexdigest())
            row.update(p.extra)
            meta = {"url": url, "caption": p.text, **{k: v for k, v in row.items() if k not in ("url", "text")}}
            tw.write({"__key__": key, ext: data, "txt": p.text.encode(), "json": orjson.dumps(meta)})
            rows.append(row)
    pq.write_table(pa.Table.from_pylist(rows, schema=DOWNLOAD_SCHEMA), pq_path)
    record_done(root, "download", f"{subset}-{shard:05d}",
                [f"images/{subset}/{shard:05d}.tar", f"images/{subset}/{shard:05d}.parquet"])
    return tar_path, pq_path


def record_done(root: str | Path, stage: str, key: str, outputs: list[str]) -> None:
    """Record hand-written files as a done partition of `stage` in the run directory, as the
    stage itself would have: added to the stage's plan and marked done with a fingerprint of the
    files' identities (a file written again gets a new one). Stages read their upstream's current
    plan, never a folder listing, so files a test writes by hand must be recorded to be read."""
    from laion_pipe import fsio, runner

    out = str(root)
    previous = runner.read_manifest(out, stage, key) or {}
    outputs = sorted(set(previous.get("outputs", [])) | set(outputs))
    fp = runner.fingerprint(key, [(rel, fsio.fingerprint_of(fsio.join(out, rel))) for rel in outputs])
    plan = [e for e in runner.read_plan(out, stage) or [] if e["key"] != key]
    parts = [runner.Partition(e["key"], tuple(e["inputs"]), e["fingerprint"]) for e in plan]
    runner.write_plan(out, stage, sorted([*parts, runner.Partition(key, (), fp)], key=lambda p: p.key))
    outcome = runner.Outcome(outputs=outputs)
    runner.write_manifest(out, stage, key, fingerprint=fp, inputs=[], outcome=outcome)


def _encode(img: Image.Image, ext: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format={"png": "PNG", "webp": "WEBP"}[ext])
    return buf.getvalue()


def synthetic_pairs(n: int, seed: int = 0, size: int = 64, unique_captions: bool = True) -> list[Pair]:
    """`n` matching (picture, caption) pairs over colours and shapes."""
    import random

    rng = random.Random(seed)
    colours = [c for c in COLOURS if c != "white"]
    out = []
    for i in range(n):
        c, s = rng.choice(colours), rng.choice(["circle", "square", "triangle"])
        text = f"a {c} {s} on a white background" + (f" #{i}" if unique_captions else "")
        out.append(Pair(text=text, image=draw_image(c, s, "white", size)))
    return out


# --- tiny models: random weights in the real loaders' formats, for stage tests ------------------------

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def tiny_models_config(folder: str | Path, seed: int = 0, name: str = "tiny-clip-test") -> dict:
    """A `models:` section (as a dict) of random-weight models small enough for CPU tests, loaded
    through the real code paths: an open_clip custom config (no weights), a zero-shot NSFW head on
    it, a small timm watermark classifier with LAION's head and an aesthetic MLP, both as files."""
    import torch

    from laion_pipe.models.aesthetic import AestheticMLP
    from laion_pipe.models.watermark import build_watermark_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg_path = folder / f"{name}.json"
    cfg_path.write_text(orjson.dumps(TINY_CLIP).decode())
    torch.manual_seed(seed)
    wm_path, aes_path = folder / "watermark.pt", folder / "aesthetic.pt"
    if not wm_path.exists():
        torch.save(build_watermark_model("test_efficientnet").state_dict(), wm_path)
    if not aes_path.exists():
        torch.save(AestheticMLP(TINY_CLIP["embed_dim"]).state_dict(), aes_path)
    clip = {"model": str(cfg_path), "pretrained": None}
    return {
        "clip_en": clip,
        "clip_multi": clip,
        "nsfw": {"method": "zeroshot", "clip": clip, "weights": None},
        "watermark": {"arch": "test_efficientnet", "weights": str(wm_path), "image_size": 64},
        "aesthetic": {"clip": clip, "weights": str(aes_path)},
    }

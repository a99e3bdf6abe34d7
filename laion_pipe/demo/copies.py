"""Known copies for the demo world: each scene served under 1-4 URLs, the way the web copies a
picture, so near-duplicate removal can be measured against the truth (`WorldSpec.copies`).

A scene is rendered once (the `original`, JPEG quality 92 at the world's side) and copied as:

| kind        | what the copy is                                                   | pHash moves (measured) |
|-------------|--------------------------------------------------------------------|------------------------|
| `reencode`  | the original's JPEG decoded and saved again at quality 25-70       | 0-2 bits               |
| `resize`    | the original scaled to 40-80% of its side (area filter), quality 92 | 0-2 bits               |
| `crop`      | 5-10% of the side cut away (split at random between the edges)     | often over 10 bits     |
| `logo`      | an opaque badge with a site name in a corner, 18-26% of the side   | often over 10 bits     |
| `recaption` | the original's bytes under another URL with a caption in another language | 0 (same pixels)  |

(The distances are those `benchmarks/bench_neardup_world.py` prints for the stored 256 px
images.) Every copy sits on a page of its own choosing, so copies of one scene meet only in
select's global near-duplicate phases, across shards and subsets (`recaption`'s caption goes
to the MULTI subset).

`measure` scores near-duplicate drop records against this truth, per copy kind (see its
docstring for the definitions).
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from .. import runner
from ..models.demo import synth

COPY_KINDS: tuple[str, ...] = ("reencode", "resize", "crop", "logo", "recaption")
ORIGINAL = "original"
LOGO_NAMES: tuple[str, ...] = ("PIXHUB", "snapr", "FOTO24", "imgz", "ArtDaily", "WALLS")
OTHER_LANGS: tuple[str, ...] = ("de", "fr", "es")


@dataclass(frozen=True)
class CopySpec:
    """The copies world: `n_scenes` scenes, each under 1 to `max_urls` URLs (uniformly), the
    copies' kinds drawn uniformly from `kinds`."""

    n_scenes: int = 200
    max_urls: int = 4
    kinds: tuple[str, ...] = COPY_KINDS
    quality: tuple[int, int] = (25, 70)  # reencode: JPEG quality range
    scale: tuple[float, float] = (0.4, 0.8)  # resize: side factor range
    crop: tuple[float, float] = (0.05, 0.10)  # crop: fraction of each side cut away
    logo: tuple[float, float] = (0.18, 0.26)  # logo: badge width as a fraction of the side

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(COPY_KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"CopySpec.kinds: unknown {sorted(unknown)} (known: {COPY_KINDS})")
        if self.n_scenes < 1 or self.max_urls < 1:
            raise ValueError("CopySpec: n_scenes and max_urls must be at least 1")


def jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def reencode(original: bytes, quality: int) -> bytes:
    return jpeg(_decoded(original), quality)


def resize(original: bytes, factor: float) -> bytes:
    im = _decoded(original)
    side = (max(8, round(im.width * factor)), max(8, round(im.height * factor)))
    return jpeg(im.resize(side, Image.Resampling.BOX if factor < 1 else Image.Resampling.BICUBIC))


def crop(original: bytes, fractions: tuple[float, float], splits: tuple[float, float]) -> bytes:
    """Cut `fractions` (x, y) of the width and height away, `splits` of each cut on the left / top."""
    im = _decoded(original)
    cw, ch = round(im.width * fractions[0]), round(im.height * fractions[1])
    left, top = round(cw * splits[0]), round(ch * splits[1])
    return jpeg(im.crop((left, top, im.width - (cw - left), im.height - (ch - top))))


def overlay_logo(original: bytes, name: str, width: float, corner: int, colour: tuple[int, int, int]) -> bytes:
    """An opaque badge (`colour`, white text `name`) of `width` x the side in corner 0-3."""
    im = _decoded(original)
    w = round(im.width * width)
    h = max(8, round(w * 0.4))
    badge = Image.new("RGB", (w, h), colour)
    draw = ImageDraw.Draw(badge)
    font = synth._font(int(h * 0.55))
    l, t, r, b = font.getbbox(name)
    draw.text(((w - (r - l)) / 2 - l, (h - (b - t)) / 2 - t), name, font=font, fill=(255, 255, 255))
    margin = round(im.width * 0.03)
    x = margin if corner in (0, 2) else im.width - w - margin
    y = margin if corner in (0, 1) else im.height - h - margin
    im.paste(badge, (x, y))
    return jpeg(im)


@dataclass(frozen=True)
class Reference:
    """One image reference of the copies world: its served bytes, its alt text, its truth."""

    body: bytes
    alt: str
    lang: str
    scene: int
    copy: str  # ORIGINAL or one of COPY_KINDS
    shape: str
    width: int
    height: int


def references(spec: CopySpec, rng: np.random.Generator, sides: Sequence[int], lang: str = "en") -> list[Reference]:
    """Every scene's original and its copies, in a random order (so copies land on other pages,
    in other WAT files and download shards than their original)."""
    refs: list[Reference] = []
    for s in range(spec.n_scenes):
        scene = synth.random_scene(rng)
        side = int(sides[int(rng.integers(len(sides)))])
        body = jpeg(synth.render(scene, side))
        caption = scene.caption(lang)

        def add(data: bytes, kind: str, alt: str = caption, alt_lang: str = lang) -> None:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
            refs.append(Reference(data, alt, alt_lang, s, kind, scene.shape, w, h))

        add(body, ORIGINAL)
        for _ in range(int(rng.integers(0, spec.max_urls))):
            kind = spec.kinds[int(rng.integers(len(spec.kinds)))]
            if kind == "reencode":
                add(reencode(body, int(rng.integers(spec.quality[0], spec.quality[1] + 1))), kind)
            elif kind == "resize":
                add(resize(body, float(rng.uniform(*spec.scale))), kind)
            elif kind == "crop":
                fr = (float(rng.uniform(*spec.crop)), float(rng.uniform(*spec.crop)))
                add(crop(body, fr, (float(rng.random()), float(rng.random()))), kind)
            elif kind == "logo":
                colour = tuple(int(c) for c in rng.integers(0, 160, 3))
                add(overlay_logo(body, LOGO_NAMES[int(rng.integers(len(LOGO_NAMES)))], float(rng.uniform(*spec.logo)),
                                 int(rng.integers(4)), colour), kind)  # type: ignore[arg-type]
            else:  # recaption: the same bytes, described in another language
                other = OTHER_LANGS[int(rng.integers(len(OTHER_LANGS)))]
                add(body, kind, scene.caption(other), other)
    order = rng.permutation(len(refs))
    return [refs[i] for i in order]


# --- measuring drop records against the truth ------------------------------------------------------


def reached(out: str | Path) -> pd.DataFrame:
    """The images that reached the near-duplicate phases (downloaded and scored), with their
    (subset, shard, key), url, pHash and colour grid as download stored them."""
    out = Path(out)
    scored = {}  # (subset, shard) -> the keys the score stage scored
    for done in runner.current(str(out), "score"):
        for rel in done.outputs:
            if rel.startswith("scores/") and rel.count("/") == 2 and rel.endswith(".parquet"):
                s = pd.read_parquet(out / rel, columns=["key", "status"])
                scored[(rel.split("/")[1], Path(rel).stem)] = set(s.key[s.status == "ok"])
    frames = []
    for done in runner.current(str(out), "download"):
        for rel in done.outputs:
            if rel.endswith(".parquet"):
                sub, shard = rel.split("/")[-2], Path(rel).stem
                t = pd.read_parquet(out / rel, columns=["key", "url", "status", "phash", "colour_grid"])
                t = t[(t.status == "success") & t.key.isin(scored.get((sub, shard), set()))]
                frames.append(t.assign(subset=sub, shard=shard))
    return pd.concat(frames, ignore_index=True)


def drop_records(out: str | Path, images: pd.DataFrame) -> pd.DataFrame:
    """Every detector's drop records as (reason, url, survivor_url), each pair once."""
    out = Path(out)
    files = [out / rel for done in runner.current(str(out), "select.neardup") for rel in done.outputs]
    t = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame(
        columns=["subset", "shard", "key", "reason", "survivor_subset", "survivor_shard", "survivor_key"])
    url = {(s, h, k): u for s, h, k, u in zip(images.subset, images.shard, images.key, images.url)}
    edges = pd.DataFrame({
        "reason": t.reason,
        "url": [url.get(x) for x in zip(t.subset, t.shard, t.key)],
        "survivor_url": [url.get(x) for x in zip(t.survivor_subset, t.survivor_shard, t.survivor_key)],
    })
    # a pair of hashes sharing several bands is found in several reduce tasks: one record each
    return edges.drop_duplicates(ignore_index=True)


def measure(truth: pd.DataFrame, edges: pd.DataFrame) -> pd.DataFrame:
    """Precision and recall of near-duplicate drop records against the world's truth, per copy kind.

    `truth`: one row per image that reached the near-duplicate phases (`url`, `scene`, `copy_kind`);
    `edges`: one row per drop record (`url` dropped, `survivor_url` kept), one detector's.

    - recall of a kind: of the images of that kind, the share the drop records connect to their
      scene's original (directly, or through other records: a copy and its original may both
      have been replaced by a third copy that ranks higher);
    - precision of a kind: of the drop records that touch an image of that kind (as the dropped
      or the surviving image), the share that join two images of the same scene. For `original`:
      records touching an original (a false one there joins two distinct scenes).
    `all` pools every record and every copy. Also the number of images, records and the false
    records of each kind."""
    scene = dict(zip(truth.url, truth.scene))
    kind = dict(zip(truth.url, truth.copy_kind))
    parent: dict[str, str] = {u: u for u in truth.url}

    def find(u: str) -> str:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    pairs = [(a, b) for a, b in zip(edges.url, edges.survivor_url) if a in scene and b in scene]
    for a, b in pairs:
        parent[find(a)] = find(b)
    original = {s: u for u, s, k in zip(truth.url, truth.scene, truth.copy_kind) if k == ORIGINAL}
    rows = []
    for k in (*COPY_KINDS, ORIGINAL, "all"):
        if k == "all":
            members = [u for u in truth.url if kind[u] != ORIGINAL]
            touching = pairs
        else:
            members = [u for u in truth.url if kind[u] == k]
            touching = [(a, b) for a, b in pairs if kind[a] == k or kind[b] == k]
        if not members:
            continue
        copies = [u for u in members if kind[u] != ORIGINAL and scene[u] in original]
        found = sum(find(u) == find(original[scene[u]]) for u in copies)
        right = sum(scene[a] == scene[b] for a, b in touching)
        rows.append({
            "kind": k, "images": len(members), "records": len(touching), "false_records": len(touching) - right,
            "precision": right / len(touching) if touching else float("nan"),
            "recall": found / len(copies) if copies else float("nan"),
        })  # fmt: skip
    return pd.DataFrame(rows)

"""The demo world: an image server on 127.0.0.1 and WAT files whose pages reference its images.

It is built so every stage has something real to do, and so the outcome is known in advance:
each image reference has a `kind` recorded in `truth.parquet`, which the demo test compares with
the statistics the pipeline computes.

| kind       | what is served / written                              | expected fate                        |
|------------|-------------------------------------------------------|--------------------------------------|
| match      | a synthetic scene, alt text = its caption (en/de/fr/es)| kept                                 |
| mismatch   | a scene, alt text describing another scene            | mostly dropped: `low_similarity`     |
| watermark  | a scene with overlaid stock-photo text                | kept, high pwatermark                |
| unsafe     | the demo's stand-in unsafe concept (a skull)          | kept, high punsafe                   |
| degraded   | a blurred / noisy / over-compressed scene             | kept, low aesthetic                  |
| nolang     | a scene with a camera file name as alt ("DSC01234")   | NOLANG subset, then low similarity   |
| small      | a 64 px image under LAION's 5 kB                       | `image_too_small_bytes`              |
| broken     | bytes that are not an image                            | `decode_error` / `not_an_image`      |
| noai       | a scene served with `X-Robots-Tag: noai`              | `opt_out`                            |
| missing    | a URL the server answers 404                           | `http_404`                           |
| duplicate  | a URL and alt already used (same or earlier page)      | `duplicate_url` at dedup (`duplicate_in_file` at extract when in the same WAT file) |
| bad_source | `data:`, `javascript:`, `.svg`, `.gif` sources         | dropped at extract                   |
| short      | alt text under 5 characters                            | `text_too_short` at extract          |

The same pages are also written as a URL list (`list/demo-list.parquet`, `World.list_path`): one row
per image reference with its `page_url`, `url` and `caption` (the alt text as the page wrote it),
plus `SAMPLE_ID` and `kind` as a published list's own columns would be. A run from it gives the
WAT run's dataset (tests/test_urllist_demo.py), with those two columns carried to every sample.

With `WorldSpec.copies` (a `copies.CopySpec`), the world is another one: each of `n_scenes`
scenes served under 1-4 URLs, as the web copies a picture (re-encoded, resized, cropped, with a
logo, under another caption), `images_per_page` references a page in a random order; `truth`
then has a row per reference with its `scene` and `copy_kind` (`original` or the copy's kind),
so near-duplicate removal can be measured against it (`benchmarks/bench_neardup_world.py`).
"""
from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..models.demo import synth
from .copies import CopySpec, references
from .imageserver import ImageServer, Reply, status
from .watgen import Img, Page, write_wat

KIND_WEIGHTS: dict[str, float] = {
    "match": 0.40,
    "mismatch": 0.13,
    "watermark": 0.08,
    "unsafe": 0.05,
    "degraded": 0.06,
    "nolang": 0.05,
    "small": 0.04,
    "broken": 0.03,
    "noai": 0.04,
    "missing": 0.03,
    "duplicate": 0.03,
    "bad_source": 0.03,
    "short": 0.03,
}
CAPTION_LANGS: dict[str, float] = {"en": 0.55, "de": 0.15, "fr": 0.15, "es": 0.15}
SIDES: tuple[int, ...] = (480, 560, 640, 800, 1100)
NOLANG_ALTS: tuple[str, ...] = ("DSC01234", "IMG_20240101_123456", "P1010203.JPG", "12345678", "DSC_0042.JPG",
                                "IMG-4411", "20240511_093512")
SHORT_ALTS: tuple[str, ...] = ("pic", "img", "1", "logo")


@dataclass
class WorldSpec:
    n_pages: int = 40
    images_per_page: int = 8
    n_wat_files: int = 4
    seed: int = 0
    latency: float = 0.0  # seconds the server waits before each image reply (fault tests need a slow world)
    kinds: dict[str, float] = field(default_factory=lambda: dict(KIND_WEIGHTS))
    langs: dict[str, float] = field(default_factory=lambda: dict(CAPTION_LANGS))  # caption language weights
    sides: tuple[int, ...] = SIDES  # image sides drawn from (smaller sides build and download faster)
    copies: CopySpec | None = None  # the world of known copies instead (n_pages and kinds then unused)


@dataclass
class World:
    server: ImageServer
    spec: WorldSpec
    wat_paths: list[str]
    truth: pd.DataFrame  # one row per <img> written: page_url, url, alt, kind, lang, shape, colour, background, watermark, ...
    root: Path
    list_path: str = ""  # the same pages as a URL list (parquet)

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _jpeg(img, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _broken_bytes(rng: random.Random) -> bytes:
    # A JPEG start marker followed by noise: sniffers think "image", decoders fail.
    return b"\xff\xd8\xff\xe0" + bytes(rng.getrandbits(8) for _ in range(8000))


def build_world(root: str | Path, spec: WorldSpec | None = None, server: ImageServer | None = None) -> World:
    """Generate the images, start (or reuse) a loopback server for them, write the WAT files."""
    spec = spec or WorldSpec()
    root = Path(root)
    (root / "wat").mkdir(parents=True, exist_ok=True)
    rng = random.Random(spec.seed)
    nprng = np.random.default_rng(spec.seed)
    server = server or ImageServer().start()

    def serve(body: bytes, headers: dict[str, str] | None = None):
        # spec.latency is read per request, so a test can slow a running world down
        return lambda req: Reply(200, body, dict(headers or {}), "image/jpeg", delay=spec.latency)

    if spec.copies is not None:
        rows, pages = _copies_pages(spec, server, nprng, serve)
        return _finish(root, spec, server, rows, pages)
    kinds, kind_w = zip(*spec.kinds.items())
    langs, lang_w = zip(*spec.langs.items())

    rows: list[dict] = []
    pages: list[Page] = []
    used_urls: list[tuple[str, str]] = []
    for i in range(spec.n_pages):
        host = f"site{i % 7}.demo"
        page_url = f"https://{host}/gallery/page-{i}.html"
        imgs: list[Img] = []
        for j in range(spec.images_per_page):
            kind = rng.choices(kinds, kind_w)[0]
            if kind == "duplicate" and not used_urls:
                kind = "match"
            lang = rng.choices(langs, lang_w)[0]
            name = f"img/{i:03d}/{j:02d}.jpg"
            path = f"/{name}"
            url = server.url(path)
            row = {"page_url": page_url, "url": url, "kind": kind, "lang": lang, "width": None, "height": None,
                   "shape": None, "colour": None, "background": None, "watermark": False, "unsafe": False, "degraded": False}
            if kind in ("match", "mismatch", "watermark", "unsafe", "degraded", "nolang", "noai"):
                scene = synth.random_scene(
                    nprng, unsafe=kind == "unsafe", watermark=kind == "watermark", degradation=kind == "degraded"
                )
                side = rng.choice(spec.sides)
                body = _jpeg(synth.render(scene, side))
                headers = {"X-Robots-Tag": "noai"} if kind == "noai" else None
                server.route(path, serve(body, headers))
                if kind == "mismatch":
                    alt = synth.mismatched_caption(nprng, scene, lang)
                elif kind == "nolang":
                    alt = rng.choice(NOLANG_ALTS)
                else:
                    alt = scene.caption(lang)
                row.update(width=side, height=side, shape=scene.shape, colour=scene.colour, background=scene.background,
                           watermark=scene.watermarked,
                           unsafe=scene.unsafe, degraded=scene.degradation is not None, n_bytes=len(body))
            elif kind == "small":
                scene = synth.random_scene(nprng)
                body = _jpeg(synth.render(scene, 64), quality=80)
                server.route(path, serve(body))
                alt = scene.caption(lang)
                row.update(width=64, height=64, n_bytes=len(body))
            elif kind == "broken":
                server.route(path, serve(_broken_bytes(rng)))
                alt = synth.caption_for(rng.choice(synth.SAFE_SHAPES), "red", "blue", lang)
            elif kind == "missing":
                server.route(path, status(404))
                alt = synth.caption_for(rng.choice(synth.SAFE_SHAPES), "green", "white", lang)
            elif kind == "duplicate":
                url, alt = rng.choice(used_urls)
            elif kind == "bad_source":
                url = rng.choice(["data:image/png;base64,iVBORw0KGgo=", "javascript:void(0)",
                                  server.url(f"/icons/{i}_{j}.svg"), server.url(f"/anim/{i}_{j}.gif")])
                alt = synth.caption_for("circle", "red", "white", lang)
            else:  # short
                alt = rng.choice(SHORT_ALTS)
            if kind not in ("duplicate", "bad_source", "short"):
                used_urls.append((url, alt))
            row["url"], row["alt"] = url, alt  # duplicate and bad_source rows replaced the page's own url
            rows.append(row)
            imgs.append(Img(url, alt))
        pages.append(Page(url=page_url, images=tuple(imgs), title=f"Gallery {i}", lang="en"))
    return _finish(root, spec, server, rows, pages)


def _copies_pages(spec: WorldSpec, server: ImageServer, nprng: np.random.Generator, serve) -> tuple[list[dict], list[Page]]:
    """The references of the copies world on pages of `spec.images_per_page`."""
    assert spec.copies is not None
    lang = max(spec.langs, key=lambda k: spec.langs[k])  # the originals' caption language
    refs = references(spec.copies, nprng, spec.sides, lang)
    rows: list[dict] = []
    pages: list[Page] = []
    per = max(1, spec.images_per_page)
    for i in range(0, len(refs), per):
        page_url = f"https://site{(i // per) % 7}.demo/gallery/page-{i // per}.html"
        imgs = []
        for j, ref in enumerate(refs[i:i + per]):
            path = f"/img/{i // per:03d}/{j:02d}.jpg"
            url = server.url(path)
            server.route(path, serve(ref.body))
            rows.append({"page_url": page_url, "url": url, "alt": ref.alt, "kind": ref.copy, "lang": ref.lang,
                         "scene": ref.scene, "copy_kind": ref.copy, "shape": ref.shape, "width": ref.width,
                         "height": ref.height, "n_bytes": len(ref.body)})
            imgs.append(Img(url, ref.alt))
        pages.append(Page(url=page_url, images=tuple(imgs), title=f"Gallery {i // per}", lang="en"))
    return rows, pages


def _finish(root: Path, spec: WorldSpec, server: ImageServer, rows: list[dict], pages: list[Page]) -> World:
    """Write the WAT files and the truth table."""
    wat_paths = []
    per_file = max(1, -(-len(pages) // spec.n_wat_files))
    for k in range(spec.n_wat_files):
        chunk = pages[k * per_file:(k + 1) * per_file]
        if not chunk:
            break
        path = str(root / "wat" / f"demo-{k:05d}.warc.wat.gz")
        write_wat(chunk, path, seed=spec.seed + k)
        wat_paths.append(path)
    truth = pd.DataFrame(rows)
    truth.to_parquet(root / "truth.parquet")
    return World(server=server, spec=spec, wat_paths=wat_paths, truth=truth, root=root, list_path=write_list(truth, root))


def write_list(truth: pd.DataFrame, root: Path) -> str:
    """The world's pages as a URL list in img2dataset's shape: `url`, `caption` (the alt as the
    page wrote it), the `page_url` it was on, and two columns of its own (`SAMPLE_ID`, `kind`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = root / "list" / "demo-list.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({
        "SAMPLE_ID": pa.array(range(len(truth)), pa.int64()),
        "url": truth["url"].tolist(),
        "caption": truth["alt"].tolist(),
        "page_url": truth["page_url"].tolist(),
        "kind": truth["kind"].tolist(),
    })
    pq.write_table(table, path, row_group_size=64)
    return str(path)

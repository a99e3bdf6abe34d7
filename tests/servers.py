"""Test images and a misbehaving loopback world for the fetch and download tests.

`misbehaving_world()` starts two ImageServers: the main one on 127.0.0.1 (allowed by the
tests' allow-list) with one route per way the web goes wrong, and a second one on 127.0.0.2
(loopback too, but outside the allow-list) that must never see a connection. Each route comes
with the status and drop reason its sample must end with.
"""
from __future__ import annotations

import contextlib
import functools
import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from laion_pipe.demo import imageserver as srv

ALLOW = ["127.0.0.1/32"]


def jpeg(width: int = 640, height: int = 480, seed: int = 0, quality: int = 90) -> bytes:
    """A noisy photo-like JPEG (noise keeps it well above LAION's 5 kB minimum)."""
    rng = np.random.default_rng(seed)
    small = (rng.random((max(2, height // 32), max(2, width // 32), 3)) * 255).astype(np.uint8)
    base = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
    arr = (base + rng.normal(0, 8, base.shape)).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def noise_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": None, "LA": 2}[mode]
    shape = (height, width) if channels is None else (height, width, channels)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


@functools.lru_cache(maxsize=None)
def png_bomb(side: int = 12_000) -> bytes:
    """A valid greyscale PNG of side x side black pixels: ~150 kB that decode to side^2 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    rows_per_block = max(1, (1 << 22) // len(row))
    parts = []
    for start in range(0, side, rows_per_block):
        parts.append(comp.compress(row * min(rows_per_block, side - start)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def truncated_jpeg(seed: int = 3) -> bytes:
    """A JPEG cut at 60%: headers intact, scan data missing (served with a correct length)."""
    data = jpeg(800, 600, seed)
    return data[: int(len(data) * 0.6)]


@dataclass(frozen=True)
class Case:
    path: str
    status: str  # img2dataset status the sample must end with
    reasons: tuple[str | None, ...]  # acceptable drop reasons (None = success)


@dataclass
class World:
    server: srv.ImageServer
    outsider: srv.ImageServer
    cases: list[Case]

    def url(self, path: str) -> str:
        return self.server.url(path)


MAX_BYTES = 400_000
"""The size cap the misbehaving world is meant to be fetched with."""


@contextlib.contextmanager
def misbehaving_world() -> Iterator[World]:
    good = jpeg(640, 480, 1)
    big = jpeg(2000, 1500, 2, quality=97)
    assert len(big) > MAX_BYTES, "the oversize image must be over the cap"
    with srv.ImageServer("127.0.0.1") as s, srv.ImageServer("127.0.0.2") as outsider:
        outsider.route("/secret.jpg", srv.static(good))
        cases: list[Case] = []

        def add(path: str, handler, status: str, *reasons: str | None) -> None:
            s.route(path, handler)
            cases.append(Case(path, status, tuple(reasons)))

        add("/ok.jpg", srv.static(good), "success", None)
        add("/ok.png", srv.static(encode(noise_image(300, 200), "PNG"), "image/png"), "success", None)
        add("/ok.webp", srv.static(encode(noise_image(300, 200), "WEBP", quality=90), "image/webp"), "success", None)
        add("/missing.jpg", srv.status(404), "failed_to_download", "http_404")
        add("/gone.jpg", srv.status(403), "failed_to_download", "http_error")
        add("/flaky.jpg", srv.sequence(srv.status(500), srv.static(jpeg(500, 400, 4))), "success", None)
        add("/always500.jpg", srv.status(503), "failed_to_download", "http_5xx")
        add("/busy.jpg", srv.sequence(srv.status(429, {"Retry-After": "1"}), srv.static(jpeg(400, 400, 5))), "success", None)
        add("/busy-long.jpg", srv.status(429, {"Retry-After": "3600"}), "failed_to_download", "http_429")
        add("/stall.jpg", srv.stall(), "failed_to_download", "timeout")
        add("/truncated.jpg", srv.truncated(good), "failed_to_download", "truncated_body")
        add("/length-more-close.jpg", srv.lying_length(good, len(good) + 5000, then="close"), "failed_to_download", "truncated_body")
        add("/length-more-stall.jpg", srv.lying_length(good, len(good) + 5000, then="stall"), "failed_to_download", "timeout")
        # Announcing fewer bytes than sent: the client either stops at the announced length
        # (a cut image: decode_error) or sees the extra bytes as a broken next response.
        small = jpeg(200, 150, 7)
        add("/length-less.jpg", srv.lying_length(small, len(small) // 2, then="close"), "failed_to_download", "http_error", "decode_error")
        add("/huge.jpg", srv.static(big), "failed_to_download", "body_too_large")
        add("/huge-chunked.jpg", srv.chunked(big), "failed_to_download", "body_too_large")
        add("/page.html", srv.static(b"<!doctype html><html><body>" + b"<p>not an image</p>" * 400 + b"</body></html>", "text/html"), "failed_to_resize", "not_an_image")
        add("/corrupt.jpg", srv.static(truncated_jpeg()), "failed_to_resize", "decode_error")
        add("/garbage.jpg", srv.static(bytes(np.random.default_rng(9).integers(0, 256, 20_000, dtype=np.uint8))), "failed_to_resize", "decode_error")
        add("/tiny.jpg", srv.static(jpeg(16, 16, 6, quality=50)), "failed_to_resize", "image_too_small_bytes")
        add("/anim.gif", srv.static(encode(noise_image(200, 200), "GIF"), "image/gif"), "failed_to_resize", "format_not_allowed")
        add("/bomb.png", srv.static(png_bomb(), "image/png"), "failed_to_resize", "decompression_bomb")
        add("/chain1", srv.redirect("/chain2", 301), "success", None)
        s.route("/chain2", srv.redirect("/chain3", 302))
        s.route("/chain3", srv.redirect("/ok.jpg", 307))
        add("/long1", srv.redirect("/long2"), "failed_to_download", "too_many_redirects")
        for i in range(2, 8):
            s.route(f"/long{i}", srv.redirect(f"/long{i + 1}"))
        s.route("/long8", srv.static(good))
        add("/loop-a", srv.redirect("/loop-b"), "failed_to_download", "redirect_loop")
        s.route("/loop-b", srv.redirect("/loop-a"))
        add("/to-outsider", srv.redirect(outsider.url("/secret.jpg")), "failed_to_download", "blocked_address")
        add("/noai.jpg", srv.static(good, headers={"X-Robots-Tag": "noai"}), "failed_to_download", "opt_out")
        add("/noimageai-us.jpg", srv.static(good, headers={"X-Robots-Tag": "laion-pipe: noindex, noimageai"}), "failed_to_download", "opt_out")
        add("/noai-other-bot.jpg", srv.static(good, headers={"X-Robots-Tag": "otherbot: noai"}), "success", None)
        yield World(s, outsider, cases)


def world_config(**overrides):
    """The download settings the misbehaving world is fetched with: short timeouts, fast retries."""
    from laion_pipe.config.download import DownloadConfig

    base = dict(
        allow_cidrs=ALLOW, timeout=3.0, connect_timeout=1.0, read_timeout=0.6, retries=1, backoff=0.01,
        max_retry_wait=2.0, max_bytes=MAX_BYTES, max_redirects=4, threads=16, per_host=8,
    )
    base.update(overrides)
    return DownloadConfig(**base)


@contextlib.contextmanager
def serve_folder(folder) -> Iterator[str]:
    """A static HTTP server for `folder` on 127.0.0.1 (port chosen by the OS), quiet; yields its
    base URL. No range requests: what fsspec's HTTP filesystem and webdataset meet on a plain host."""
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()

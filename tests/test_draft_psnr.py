"""Draft mode (on by default) gives the same images as img2dataset's full decode and INTER_AREA,
up to resampling noise.

The download stage decodes JPEGs at a reduced DCT scale (1/8 to 5/8) when the target is that
much smaller, and resizes bilinearly when under 1.5x is left (laion_pipe/images.py); img2dataset
always decodes at full size and uses INTER_AREA. This proves the outputs are equivalent on the
download benchmark's own images (benchmarks/bench_download.py: same generator, same size mix,
same seeds) and on photos of random, odd sizes: the mean PSNR of draft against full-decode
outputs, over the images draft mode changes at all, is at least 40 dB, and the images it does
not apply to come out byte for byte the same.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from laion_pipe.images import ImageSpec, draft_eighths, process_image, target_size

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_download import SIZES, make_jpeg  # noqa: E402

MIN_MEAN_PSNR = 40.0


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a - b) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def approximated(w: int, h: int, spec: ImageSpec) -> bool:
    """Whether draft mode changes anything for a w x h JPEG: a reduced DCT scale, or a bilinear
    last step (a downscale by under 1.5x)."""
    import laion_pipe.images as images

    tw, th = target_size(w, h, spec)
    shrinks = spec.resize_mode != "no" and (tw, th) != (w, h) and tw <= w and th <= h
    return draft_eighths(w, h, spec) < 8 or (shrinks and max(w / tw, h / th) < images._LINEAR_MAX_RATIO)


def draft_vs_full(sizes: list[tuple[int, int]], **spec_kw) -> tuple[list[float], int]:
    """PSNR of each photo (one per size, seeded by its index) that draft mode changes, and how
    many it leaves alone (asserted identical)."""
    draft, full = ImageSpec(draft=True, **spec_kw), ImageSpec(draft=False, **spec_kw)
    changed, unchanged = [], 0
    for i, (w, h) in enumerate(sizes):
        data = make_jpeg(w, h, i)
        a, b = process_image(data, draft), process_image(data, full)
        assert a.ok and b.ok, (a.error, b.error)
        assert (a.width, a.height, a.original_width, a.original_height) == (b.width, b.height, b.original_width, b.original_height)
        if not approximated(w, h, draft):
            assert a.data == b.data, f"{w}x{h}: draft mode does not apply, so the bytes must be the same"
            unchanged += 1
        else:
            changed.append(psnr(pixels(a.data), pixels(b.data)))
    return changed, unchanged


def benchmark_sizes(n: int) -> list[tuple[int, int]]:
    return [SIZES[i % len(SIZES)] for i in range(n)]


def odd_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """Web-like sizes: 200-2000 px wide, aspect 1:2 to 2:1, mostly not divisible by 8."""
    rng = np.random.default_rng(seed)
    sizes = []
    for _ in range(n):
        w = int(rng.integers(200, 2000))
        sizes.append((w, int(np.clip(w * rng.uniform(0.5, 2.0), 100, 2400))))
    return sizes


@pytest.mark.parametrize("mode", ["keep_ratio", "center_crop", "border"])
def test_draft_matches_full_decode_on_benchmark_images(mode):
    # Every size of the benchmark's mix, three seeds each (the benchmark cycles through SIZES).
    changed, unchanged = draft_vs_full(benchmark_sizes(3 * len(SIZES)), resize_mode=mode)
    assert len(changed) >= 12, (len(changed), unchanged)
    assert np.mean(changed) >= MIN_MEAN_PSNR, f"{mode}: mean PSNR {np.mean(changed):.1f} dB over {len(changed)} images"
    assert min(changed) >= MIN_MEAN_PSNR - 3, f"{mode}: worst image {min(changed):.1f} dB"


@pytest.mark.slow
def test_draft_matches_full_decode_on_all_benchmark_images():
    """All 300 images of the benchmark's default run, at its settings (256, keep_ratio, q95)."""
    changed, unchanged = draft_vs_full(benchmark_sizes(300))
    assert np.mean(changed) >= MIN_MEAN_PSNR, f"mean PSNR {np.mean(changed):.1f} dB over {len(changed)} images"


@pytest.mark.parametrize("mode", ["keep_ratio", "center_crop", "border"])
def test_draft_matches_full_decode_on_odd_sizes(mode):
    """Web images have any size: at sides not divisible by 8, libjpeg's scaled output holds a
    fraction of a pixel less picture than its size says, which the resize must account for."""
    changed, _ = draft_vs_full(odd_sizes(16, seed=1), resize_mode=mode)
    assert len(changed) >= 12
    assert np.mean(changed) >= MIN_MEAN_PSNR, f"{mode}: mean PSNR {np.mean(changed):.1f} dB over {len(changed)} images"
    assert min(changed) >= MIN_MEAN_PSNR - 3, f"{mode}: worst image {min(changed):.1f} dB"


def test_scaled_decode_is_resized_by_its_true_scale():
    """500x375 at 5/8 decodes to 313x235 pixels holding 312.5x234.375 of picture. Resized to
    256x192 by the true scale it matches the full decode; resized as if the 313x235 pixels were
    the whole picture it drifts by up to half a pixel towards the far edges, which costs ~7 dB."""
    import cv2

    import laion_pipe.images as images

    spec = ImageSpec(resize_mode="border")
    data = make_jpeg(500, 375, 3)
    assert draft_eighths(500, 375, spec) == 5
    decoded = images.decode_jpeg_bgr(data, 500, 375, 5)
    assert decoded.shape == (235, 313, 3)
    reference = cv2.resize(images.decode_jpeg_bgr(data, 500, 375), (256, 192), interpolation=cv2.INTER_AREA).astype(np.float64)
    true_scale = images.resize(decoded, spec, (500, 375), 5)[32:224]  # border mode pads 192 -> 256
    stretched = cv2.resize(decoded, (256, 192), interpolation=cv2.INTER_LINEAR)
    assert psnr(true_scale, reference) >= MIN_MEAN_PSNR
    assert psnr(stretched, reference) < psnr(true_scale, reference) - 4


def test_six_and_seven_eighths_would_lose_quality(monkeypatch):
    """Why draft decoding stops at 5/8: where only 6/8 or 7/8 would cover the target (300x300,
    400x300, 500x375 to 256 px), a full decode with a bilinear last step is closer to
    img2dataset's output than libjpeg's 6x6 and 7x7 scaled IDCTs are, at no more CPU."""
    import laion_pipe.images as images

    sizes = [(300, 300), (400, 300), (500, 375)] * 2
    default, _ = draft_vs_full(sizes)
    monkeypatch.setattr(images, "_MAX_DRAFT_EIGHTHS", 7)
    assert {draft_eighths(w, h, ImageSpec()) for w, h in sizes} == {6, 7}
    finer, _ = draft_vs_full(sizes)
    assert np.mean(default) > np.mean(finer) + 1, (np.mean(default), np.mean(finer))


def test_psnr_check_can_fail():
    """The measure tells a real difference apart: a blurred output scores well under 40 dB."""
    data = make_jpeg(1600, 1200, 1)
    out = pixels(process_image(data, ImageSpec(draft=False)).data)
    blurred = np.asarray(Image.fromarray(out.astype(np.uint8)).reduce(2).resize((out.shape[1], out.shape[0]))).astype(np.float64)
    assert psnr(out, blurred) < MIN_MEAN_PSNR


def zone_plate(width: int, height: int) -> bytes:
    """A chirp up to the Nyquist frequency: the worst case for aliasing in any downscale."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    zp = (127.5 + 127.5 * np.cos(np.pi * ((x - width / 2) ** 2 + (y - height / 2) ** 2) / (2 * max(width, height)))).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.dstack([zp, np.roll(zp, 50, 1), zp[::-1]])).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def test_bilinear_step_after_draft_is_as_close_to_full_decodes_as_inter_area(monkeypatch):
    """A draft-decoded image within _LINEAR_MAX_RATIO of its target (1600x1200 at 1/4, 800x600 at
    1/2: 1.17x) is resized bilinearly instead of with INTER_AREA. Against full decodes it scores
    the same (within 0.5 dB) on the benchmark's images and on a zone plate. A full decode within
    that ratio (300x300, 500x375: 1.17x, 1.46x) scores over 40 dB against INTER_AREA."""
    import cv2

    import laion_pipe.images as images

    from laion_pipe.neardup.phash import THUMB

    calls = []
    real_resize = cv2.resize

    def recording(src, dsize, *a, **kw):  # the image's resize steps (not the pHash thumbnail's)
        if tuple(dsize) != (THUMB, THUMB):
            calls.append(kw.get("interpolation"))
        return real_resize(src, dsize, *a, **kw)

    monkeypatch.setattr(images.cv2, "resize", recording)
    full = ImageSpec(draft=False)
    for w, h, data in [(1600, 1200, make_jpeg(1600, 1200, 9)), (800, 600, make_jpeg(800, 600, 5)), (1600, 1200, zone_plate(1600, 1200)), (800, 600, zone_plate(800, 600))]:
        ref = pixels(process_image(data, full).data)
        calls.clear()
        bilinear = psnr(pixels(process_image(data, ImageSpec()).data), ref)
        assert calls == [cv2.INTER_LINEAR], (w, h, calls)
        with monkeypatch.context() as m:
            m.setattr(images, "_LINEAR_MAX_RATIO", 1.0)  # INTER_AREA after draft, as before
            calls.clear()
            area = psnr(pixels(process_image(data, ImageSpec()).data), ref)
            assert calls == [cv2.INTER_AREA], (w, h, calls)
        assert bilinear >= area - 0.5, (w, h, bilinear, area)
    for w, h in [(300, 300), (500, 375)]:
        data = make_jpeg(w, h, 2)
        ref = pixels(process_image(data, full).data)
        calls.clear()
        bilinear = psnr(pixels(process_image(data, ImageSpec()).data), ref)
        assert calls == [cv2.INTER_LINEAR] and draft_eighths(w, h, ImageSpec()) == 8, (w, h, calls)
        assert bilinear >= MIN_MEAN_PSNR, (w, h, bilinear)

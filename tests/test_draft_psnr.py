"""Draft decoding (on by default) gives the same images as a full decode, up to resampling noise.

The download stage decodes JPEGs at 1/2, 1/4 or 1/8 scale when the target is that much smaller
(laion_pipe/images.py); img2dataset always decodes at full size. This proves the outputs are
equivalent on the download benchmark's own images (benchmarks/bench_download.py: same generator,
same size mix, same seeds): the mean PSNR of draft against full-decode outputs, over the images
draft decoding changes at all, is at least 40 dB, and the images it does not apply to come out
byte for byte the same.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from laion_pipe.images import ImageSpec, draft_scale, process_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_download import SIZES, make_jpeg  # noqa: E402

MIN_MEAN_PSNR = 40.0


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a - b) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def draft_vs_full(n_images: int, **spec_kw) -> tuple[list[float], int]:
    """PSNR of each of the benchmark's first `n_images` images that draft decoding changes, and
    how many it leaves alone (asserted identical)."""
    draft, full = ImageSpec(draft=True, **spec_kw), ImageSpec(draft=False, **spec_kw)
    changed, unchanged = [], 0
    for i in range(n_images):
        w, h = SIZES[i % len(SIZES)]
        data = make_jpeg(w, h, i)
        a, b = process_image(data, draft), process_image(data, full)
        assert a.ok and b.ok, (a.error, b.error)
        assert (a.width, a.height, a.original_width, a.original_height) == (b.width, b.height, b.original_width, b.original_height)
        if draft_scale(w, h, draft) == 1:
            assert a.data == b.data, f"{w}x{h}: draft does not apply, so the bytes must be the same"
            unchanged += 1
        else:
            changed.append(psnr(pixels(a.data), pixels(b.data)))
    return changed, unchanged


@pytest.mark.parametrize("mode", ["keep_ratio", "center_crop", "border"])
def test_draft_matches_full_decode_on_benchmark_images(mode):
    # Every size of the benchmark's mix, three seeds each (the benchmark cycles through SIZES).
    changed, unchanged = draft_vs_full(3 * len(SIZES), resize_mode=mode)
    assert len(changed) >= 12 and unchanged >= 6, (len(changed), unchanged)
    assert np.mean(changed) >= MIN_MEAN_PSNR, f"{mode}: mean PSNR {np.mean(changed):.1f} dB over {len(changed)} images"
    assert min(changed) >= MIN_MEAN_PSNR - 3, f"{mode}: worst image {min(changed):.1f} dB"


@pytest.mark.slow
def test_draft_matches_full_decode_on_all_benchmark_images():
    """All 300 images of the benchmark's default run, at its settings (256, keep_ratio, q95)."""
    changed, unchanged = draft_vs_full(300)
    assert np.mean(changed) >= MIN_MEAN_PSNR, f"mean PSNR {np.mean(changed):.1f} dB over {len(changed)} images"


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
    the same (within 0.5 dB) on the benchmark's images and on a zone plate."""
    import cv2

    import laion_pipe.images as images

    calls = []
    real_resize = cv2.resize
    monkeypatch.setattr(images.cv2, "resize", lambda *a, **kw: calls.append(kw.get("interpolation")) or real_resize(*a, **kw))
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

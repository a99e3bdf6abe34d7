"""Image checks and resizing (laion_pipe.images), compared with img2dataset's own Resizer."""
from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset imports albumentations: no update check

import io  # noqa: E402

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from laion_pipe.images import ImageSpec, draft_eighths, process_image, target_size
from servers import encode, jpeg, noise_image, png_bomb, truncated_jpeg


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a - b) ** 2).mean()
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


SIZES = [(1600, 1200), (1200, 1600), (1024, 768), (500, 333), (1000, 255), (640, 480), (300, 300), (200, 150), (99, 100),
         (512, 512), (512, 384), (768, 512)]  # whole ratios: OpenCV's integer INTER_AREA shortcut


@pytest.mark.parametrize("only_if_bigger", [False, True])
@pytest.mark.parametrize("mode", ["keep_ratio", "center_crop", "border", "keep_ratio_largest", "no"])
def test_sizes_and_pixels_match_img2dataset(mode, only_if_bigger):
    from img2dataset.resizer import Resizer

    theirs = Resizer(image_size=256, resize_mode=mode, resize_only_if_bigger=only_if_bigger)
    exact = ImageSpec(image_size=256, resize_mode=mode, resize_only_if_bigger=only_if_bigger, min_bytes=0, draft=False)
    fast = ImageSpec(image_size=256, resize_mode=mode, resize_only_if_bigger=only_if_bigger, min_bytes=0, draft=True)
    for i, (w, h) in enumerate(SIZES):
        data = jpeg(w, h, seed=i)
        ref_bytes, rw, rh, row, roh, err = theirs(io.BytesIO(data))
        assert err is None
        reference = decode(ref_bytes)
        for spec in (exact, fast):
            mine = process_image(data, spec)
            assert mine.ok, (mode, w, h, mine.error)
            assert (mine.width, mine.height, mine.original_width, mine.original_height) == (rw, rh, row, roh), (mode, w, h)
        # Without draft decoding: img2dataset's pixels exactly (same filters, same JPEG encoder).
        assert psnr(decode(process_image(data, exact).data), reference) == 99.0, (mode, w, h)
        # With it: resampling noise only.
        assert psnr(decode(process_image(data, fast).data), reference) > 32, (mode, w, h)


def test_target_size_rounding():
    assert target_size(1600, 1200, ImageSpec()) == (341, 256)
    assert target_size(1000, 255, ImageSpec()) == (1004, 256)
    assert target_size(1600, 1200, ImageSpec(resize_mode="border")) == (256, 192)
    assert target_size(100, 80, ImageSpec(resize_only_if_bigger=True)) == (100, 80)
    assert target_size(5000, 1, ImageSpec(resize_mode="border")) == (256, 1)


def test_resize_only_if_bigger_never_upscales():
    spec = ImageSpec(image_size=256, resize_only_if_bigger=True, min_bytes=0)
    small = process_image(jpeg(200, 150), spec)
    big = process_image(jpeg(800, 600), spec)
    assert (small.width, small.height) == (200, 150)
    assert (big.width, big.height) == (341, 256)


def test_draft_decoding_is_used_and_changes_only_noise(monkeypatch):
    import laion_pipe.images as images

    scales = []
    original = images.decode_jpeg_bgr

    def spy(data, width, height, eighths):
        scales.append(eighths)
        return original(data, width, height, eighths)

    monkeypatch.setattr(images, "decode_jpeg_bgr", spy)
    for i, (w, h) in enumerate([(1600, 1200), (2048, 1536), (1024, 768), (640, 480)]):
        data = jpeg(w, h, seed=10 + i)
        fast = process_image(data, ImageSpec(draft=True, min_bytes=0))
        full = process_image(data, ImageSpec(draft=False, min_bytes=0))
        assert (fast.width, fast.height) == (full.width, full.height)
        assert psnr(decode(fast.data), decode(full.data)) > 38
    assert sorted(set(scales)) == [2, 3, 5, 8], "2/8 for 1600x1200 and 2048x1536, 3/8 for 1024x768, 5/8 for 640x480, 8/8 without draft"
    # At 1/2, 1/4 and 1/8 the rule is Pillow's draft rule: the decoded size still covers the target.
    im = Image.open(io.BytesIO(jpeg(1600, 1200)))
    im.draft("RGB", target_size(1600, 1200, ImageSpec()))
    assert im.size == (400, 300) and draft_eighths(1600, 1200, ImageSpec()) == 2
    assert draft_eighths(1024, 768, ImageSpec()) == 3, "384x288 covers 341x256; 256x192 (2/8) does not"
    assert draft_eighths(1600, 1200, ImageSpec(draft=False)) == 8
    assert draft_eighths(1600, 1200, ImageSpec(resize_mode="no")) == 8
    assert draft_eighths(5000, 300, ImageSpec()) == 8, "the short side sets the scale"
    assert draft_eighths(300, 300, ImageSpec()) == 8, "7/8 would cover 256x256, but 6/8 and 7/8 are never used"
    assert draft_eighths(500, 375, ImageSpec()) == 8, "only 6/8 covers it"


def test_truncated_or_grey_jpegs_take_the_pillow_path(monkeypatch):
    """OpenCV fills a truncated JPEG with grey instead of failing: only complete colour JPEGs
    reach it; the rest decode (or fail) in Pillow exactly as before."""
    import laion_pipe.images as images

    assert images.decode_jpeg_bgr(truncated_jpeg(), 800, 600) is None
    assert process_image(truncated_jpeg(), ImageSpec()).reason == "decode_error"
    grey = encode(noise_image(640, 480).convert("L"), "JPEG", quality=95)
    calls = []
    monkeypatch.setattr(images, "decode_jpeg_bgr", lambda *a: calls.append(a))
    res = process_image(grey, ImageSpec(min_bytes=0))
    assert res.ok and (res.width, res.height) == (341, 256) and calls == []
    # A trailing byte after the end-of-image marker: not the fast path, still a good image.
    res = process_image(jpeg(800, 600) + b"\0", ImageSpec(min_bytes=0))
    assert res.ok and (res.width, res.height) == (341, 256)


def _odd_colour_jpegs() -> list[tuple[str, bytes]]:
    """Colour JPEGs of the kinds the fast decoder sees: odd sides, progressive, 4:4:4 and 4:2:2
    chroma, restart markers, an EXIF orientation tag (ignored by both, as img2dataset does)."""
    base = Image.open(io.BytesIO(jpeg(1023, 767, seed=5)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    return [
        ("odd sides", jpeg(1023, 767, seed=5)),
        ("tiny", jpeg(9, 7, seed=6)),
        ("progressive", encode(base, "JPEG", quality=90, progressive=True)),
        ("4:4:4", encode(base, "JPEG", quality=95, subsampling=0)),
        ("4:2:2", encode(base, "JPEG", quality=95, subsampling=1)),
        ("restart markers", encode(base, "JPEG", quality=85, restart_marker_blocks=4)),
        ("exif orientation", encode(base, "JPEG", quality=90, exif=exif.tobytes())),
    ]


def test_fast_decoder_gives_opencvs_pixels_at_every_scale():
    """decode_jpeg_bgr (libjpeg-turbo through simplejpeg) returns exactly what img2dataset's
    cv2.imdecode returns, full size and at each DCT scale, orientation ignored."""
    import cv2
    import laion_pipe.images as images

    flags = {8: cv2.IMREAD_COLOR, 4: cv2.IMREAD_REDUCED_COLOR_2, 2: cv2.IMREAD_REDUCED_COLOR_4, 1: cv2.IMREAD_REDUCED_COLOR_8}
    for name, data in _odd_colour_jpegs():
        w, h = Image.open(io.BytesIO(data)).size
        for eighths, flag in flags.items():
            mine = images.decode_jpeg_bgr(data, w, h, eighths)
            ref = cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
            assert mine is not None and mine.shape == ref.shape == (-(-h * eighths // 8), -(-w * eighths // 8), 3), (name, eighths)
            assert np.array_equal(mine, ref), (name, eighths)
        full = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        for eighths in (3, 5):  # scales OpenCV does not offer: libjpeg's own, checked against a resize
            mine = images.decode_jpeg_bgr(data, w, h, eighths)
            size = (-(-w * eighths // 8), -(-h * eighths // 8))
            assert mine is not None and mine.shape == (size[1], size[0], 3), (name, eighths)
            if min(size) >= 16:
                ref = cv2.resize(full, (0, 0), fx=eighths / 8, fy=eighths / 8, interpolation=cv2.INTER_AREA)
                ref = cv2.copyMakeBorder(ref, 0, max(0, size[1] - ref.shape[0]), 0, max(0, size[0] - ref.shape[1]), cv2.BORDER_REPLICATE)
                assert psnr(mine[: size[1] - 1, : size[0] - 1].astype(float), ref[: size[1] - 1, : size[0] - 1].astype(float)) > 30, (name, eighths)


@pytest.mark.parametrize("kind", ["grey", "cmyk", "grey progressive"])
def test_pillow_draft_path_keeps_the_geometry(kind):
    """JPEGs the fast decoder leaves to Pillow (greyscale, CMYK) are drafted by Pillow at 1/2-1/8
    and resized by that true scale: at odd sizes they match the full decode to resampling noise
    (a wrong scale would show a shifted or cropped picture, ~10-13 dB)."""
    drafted_any = []
    for w, h in [(1023, 767), (777, 555), (1600, 1199)]:
        base = Image.open(io.BytesIO(jpeg(w, h, seed=w)))
        im = base.convert("L") if kind.startswith("grey") else base.convert("CMYK")
        data = encode(im, "JPEG", quality=92, progressive=kind.endswith("progressive"))
        fast = process_image(data, ImageSpec(min_bytes=0))
        full = process_image(data, ImageSpec(draft=False, min_bytes=0))
        assert (fast.width, fast.height) == (full.width, full.height)
        assert psnr(decode(fast.data), decode(full.data)) >= 40, (kind, w, h)
        drafted = Image.open(io.BytesIO(data))
        drafted.draft("RGB", target_size(w, h, ImageSpec()))
        drafted_any.append(drafted.size != (w, h))
    assert all(drafted_any), "Pillow drafts each of these (else this test would not test the scale)"


def test_multi_picture_jpegs_are_jpegs():
    """Phones write JPEGs with a multi-picture (MPF) segment, which Pillow opens as format MPO:
    stored as JPEGs (their first picture), as img2dataset does."""
    base = Image.open(io.BytesIO(jpeg(800, 600)))
    data = encode(base, "MPO", save_all=True, append_images=[base.copy()])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    res = process_image(data, ImageSpec(min_bytes=0))
    assert res.ok and (res.width, res.height) == (341, 256), res.error
    plain = process_image(encode(base, "JPEG", quality=95), ImageSpec(min_bytes=0))
    assert psnr(decode(res.data), decode(plain.data)) > 35


def test_fast_decoder_refuses_damaged_data_that_ends_like_a_jpeg():
    """Cut scan data with an end-of-image marker glued back on (OpenCV would silently return grey
    pixels), or no scan at all: the fast decoder declines and leaves the body to Pillow."""
    import laion_pipe.images as images

    damaged = truncated_jpeg() + b"\xff\xd9"
    assert images.decode_jpeg_bgr(damaged, 800, 600) is None
    assert images.decode_jpeg_bgr(b"\xff\xd8" + bytes(6000) + b"\xff\xd9", 800, 600) is None


def test_draft_is_not_used_when_the_target_is_not_smaller():
    data = jpeg(300, 200, seed=3)
    a = process_image(data, ImageSpec(image_size=256, draft=True, min_bytes=0))
    b = process_image(data, ImageSpec(image_size=256, draft=False, min_bytes=0))
    assert a.data == b.data


@pytest.mark.parametrize(
    "make, spec_kw, reason",
    [
        (lambda: jpeg(16, 16, quality=50), {}, "image_too_small_bytes"),
        (lambda: b"<html><body>" + b"nope " * 2000 + b"</body></html>", {}, "not_an_image"),
        (lambda: b'{"error": "not found"}' + b" " * 6000, {}, "not_an_image"),
        (lambda: bytes(np.random.default_rng(1).integers(0, 256, 9000, dtype=np.uint8)), {}, "decode_error"),
        (truncated_jpeg, {}, "decode_error"),
        (lambda: encode(noise_image(200, 200), "GIF"), {}, "format_not_allowed"),
        (lambda: encode(noise_image(200, 200), "BMP"), {}, "format_not_allowed"),
        (lambda: jpeg(640, 480), {"allowed_formats": frozenset({"PNG"})}, "format_not_allowed"),
        (lambda: jpeg(640, 480), {"min_width": 700}, "image_too_small"),
        (lambda: jpeg(640, 480), {"min_height": 500}, "image_too_small"),
        (lambda: jpeg(640, 480), {"max_width": 600}, "image_too_large"),
        (lambda: jpeg(640, 480), {"max_height": 400}, "image_too_large"),
        (lambda: jpeg(900, 200), {"max_aspect_ratio": 3.0}, "bad_aspect_ratio"),
        (lambda: jpeg(640, 480), {"max_pixels": 640 * 480 - 1}, "decompression_bomb"),
    ],
)
def test_each_check_has_its_reason(make, spec_kw, reason):
    res = process_image(make(), ImageSpec(**spec_kw))
    assert res.reason == reason, res.error
    assert res.data is None and res.error


@pytest.mark.parametrize(
    "size, spec_kw, reason, says",
    [
        ((2000, 4), {"image_size": 512}, "image_too_large", "stored as 256000x512, over 89478485 pixels"),
        ((4, 2000), {"image_size": 512, "resize_mode": "center_crop"}, "image_too_large", "512x256000, over 89478485 pixels of memory"),
        ((1600, 6), {}, "image_too_large", "jpg encoder's 65500 px"),  # 68267x256
        ((2000, 30), {"encode_format": "webp"}, "image_too_large", "webp encoder's 16383 px"),  # 17067x256
        ((17000, 10), {"encode_format": "webp", "resize_mode": "no"}, "image_too_large", "webp encoder's 16383 px"),
    ],
)
def test_extreme_aspect_ratios_are_refused_before_decoding(monkeypatch, size, spec_kw, reason, says):
    """keep_ratio makes the long side of a sliver huge: refused from the header with what the
    resize would have made, before any pixels are decoded or a gigabyte-sized array allocated
    (OpenCV would fail only at encoding, after the work)."""
    import laion_pipe.images as images

    data = encode(noise_image(*size), "PNG") if spec_kw.get("resize_mode") == "no" else jpeg(*size)

    def no_decoding(*a, **kw):
        raise AssertionError("refused images must not be decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(images, "decode_jpeg_bgr", no_decoding)
    res = process_image(data, ImageSpec(min_bytes=0, **spec_kw))
    assert res.reason == reason and says in res.error, res.error
    assert (res.original_width, res.original_height) == size


def test_output_size_follows_the_resize_rules():
    from laion_pipe.images import output_size

    assert output_size(1600, 1200, ImageSpec()) == (341, 256)
    assert output_size(1600, 1200, ImageSpec(resize_mode="center_crop")) == (256, 256)
    assert output_size(1600, 1200, ImageSpec(resize_mode="border")) == (256, 256)
    assert output_size(1600, 1200, ImageSpec(resize_mode="keep_ratio_largest")) == (256, 192)  # border's resize, no padding
    assert output_size(250, 200, ImageSpec(resize_mode="keep_ratio_largest", resize_only_if_bigger=True)) == (250, 200)
    assert output_size(100, 80, ImageSpec(resize_only_if_bigger=True)) == (100, 80)
    assert output_size(100, 80, ImageSpec(resize_mode="no")) == (100, 80)
    for w, h in [(1600, 1200), (640, 480), (300, 200), (1000, 255)]:
        for mode in ("keep_ratio", "center_crop", "border", "keep_ratio_largest"):
            res = process_image(jpeg(w, h), ImageSpec(resize_mode=mode, min_bytes=0))
            assert (res.width, res.height) == output_size(w, h, ImageSpec(resize_mode=mode)), (w, h, mode)


def test_png_decompression_bomb_is_refused_from_the_header(monkeypatch):
    def no_decoding(self):
        raise AssertionError("a bomb must be refused before its pixels are decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    data = png_bomb()
    assert len(data) < 1_000_000
    res = process_image(data, ImageSpec())
    assert res.reason == "decompression_bomb"
    assert (res.original_width, res.original_height) == (12_000, 12_000)


def test_transparency_is_composited_on_white_like_img2dataset():
    rgba = np.zeros((300, 300, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent except a square
    rgba[100:200, 100:200, 3] = 255
    res = process_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), ImageSpec(encode_format="png", min_bytes=0, resize_mode="no"))
    out = decode(res.data)
    assert out[10, 10].tolist() == [255, 255, 255]
    assert out[150, 150].tolist() == [255, 0, 0]


@pytest.mark.parametrize("mode", ["L", "LA", "P", "CMYK", "I;16"])
def test_other_modes_become_rgb(mode):
    base = noise_image(320, 240)
    if mode == "I;16":
        arr = (np.asarray(base.convert("L")).astype(np.uint16) * 257)
        im = Image.fromarray(arr)
        assert im.mode == "I;16"
    else:
        im = base.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    res = process_image(encode(im, fmt), ImageSpec(min_bytes=0))
    assert res.ok, res.error
    out = Image.open(io.BytesIO(res.data))
    assert out.mode == "RGB" and out.size == (341, 256)
    if mode == "I;16":
        assert 60 < decode(res.data).mean() < 200, "16-bit samples are scaled down, not clipped to white"


@pytest.mark.parametrize("fmt, pil", [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")])
def test_encode_formats(fmt, pil):
    res = process_image(jpeg(800, 600), ImageSpec(encode_format=fmt, encode_quality=90 if fmt != "png" else 6))
    assert res.ok
    assert Image.open(io.BytesIO(res.data)).format == pil


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    w=st.integers(1, 700), h=st.integers(1, 700), size=st.sampled_from([16, 64, 100, 256]),
    mode=st.sampled_from(["keep_ratio", "center_crop", "border", "keep_ratio_largest", "no"]), only_if_bigger=st.booleans(),
    kind=st.sampled_from(["4:2:0", "4:4:4", "grey", "cmyk", "progressive", "png"]),
)
def test_draft_mode_never_changes_the_outcome_or_the_size(w, h, size, mode, only_if_bigger, kind):
    """Any size, resize mode and JPEG flavour: draft mode (reduced DCT scales, Pillow's drafts for
    greyscale and CMYK, the bilinear last step) gives the same status, reason and stored size as
    img2dataset's full decode, and that size is `output_size`'s."""
    from laion_pipe.images import output_size

    im = noise_image(w, h, seed=w * 1000 + h)
    data = {
        "4:2:0": lambda: encode(im, "JPEG", quality=80),
        "4:4:4": lambda: encode(im, "JPEG", quality=80, subsampling=0),
        "grey": lambda: encode(im.convert("L"), "JPEG", quality=80),
        "cmyk": lambda: encode(im.convert("CMYK"), "JPEG", quality=80),
        "progressive": lambda: encode(im, "JPEG", quality=80, progressive=True),
        "png": lambda: encode(im, "PNG"),
    }[kind]()
    kw = {"image_size": size, "resize_mode": mode, "resize_only_if_bigger": only_if_bigger, "min_bytes": 0}
    fast, exact = process_image(data, ImageSpec(draft=True, **kw)), process_image(data, ImageSpec(draft=False, **kw))
    assert (fast.reason, fast.width, fast.height) == (exact.reason, exact.width, exact.height), (fast.error, exact.error)
    if exact.ok:
        assert (exact.width, exact.height) == output_size(w, h, ImageSpec(**kw))

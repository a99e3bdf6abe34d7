"""Image checks and resizing for the download stage, with img2dataset's resize semantics.

Every way an image can be refused is a drop reason (schema.DROP_REASONS), checked cheapest
first: byte size, then the header (format, pixel count, sides, aspect ratio: Pillow reads only
the header at open), and only then the pixels.

Who decodes what, and why:
- Pillow opens every body: it reads only the header, so the checks above cost no decoding, and it
  decodes whatever is not a plain colour JPEG (PNG, WebP, greyscale, CMYK, truncated files),
  reporting truncated or broken data as errors where OpenCV silently returns grey pixels.
- A colour JPEG that ends with its end-of-image marker (so it is not truncated) is decoded by
  libjpeg-turbo through simplejpeg (OpenCV's pixels exactly, for less CPU), then resized and
  encoded by OpenCV in one numpy array: img2dataset's own resize and encoder calls, with no
  Pillow <-> numpy copies in between (they cost as much as the resize).
- Draft mode (`draft`, on by default) trades img2dataset's exact pixels for equivalent ones
  (tests/test_draft_psnr.py: mean PSNR over 40 dB against its outputs) at about half the CPU:
  libjpeg decodes a JPEG at a reduced DCT scale M/8 (M = 1..5: the smallest that still covers
  the target size, so the final resize always has work left and the output size never changes),
  several times cheaper than a full decode when the target is much smaller; and when what is
  left to resize is under 1.5x, that last step is bilinear (as good as INTER_AREA at such a
  ratio, ~5x cheaper: INTER_AREA is OpenCV's slowest filter at non-integer ratios).

Resizing is img2dataset's: the same sizes, crops and white borders (albumentations' rounding)
and the same OpenCV filters (INTER_AREA down, Lanczos-4 up), so without draft decoding the
pixels are img2dataset's exactly (tests/test_download_images.py checks both).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from .neardup.phash import features

ResizeMode = Literal["keep_ratio", "center_crop", "border", "keep_ratio_largest", "no"]

_PIL_ENCODE = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
_FLOAT_AREA_MAX_VALUES = 1 << 20
"""Largest array (height x width x 3) resized through OpenCV's float32 INTER_AREA (see resize)."""
_LINEAR_MAX_RATIO = 1.5
"""In draft mode, an image less than this much bigger than its target is resized bilinearly (see resize)."""
_MAX_DRAFT_EIGHTHS = 5
"""Largest reduced DCT scale (in eighths) draft decoding uses. Where only 6/8 or 7/8 would cover
the target (300x300, 400x300, 500x375 to 256 px), a full decode with a bilinear last step is
closer to img2dataset's output for no more CPU: on the download benchmark's 300 images, allowing
6/8 and 7/8 gave a mean 41.9 dB (worst 38.7) against 42.9 dB (worst 40.2) without them
(tests/test_draft_psnr.py::test_six_and_seven_eighths_would_lose_quality)."""
_WHITE = (255, 255, 255)
_MAX_ENCODE_SIDE = {"jpg": 65_500, "webp": 16_383, "png": 2**31 - 1}
"""Longest side each encoder can write (libjpeg's JPEG_MAX_DIMENSION, WebP's format limit)."""


@dataclass(frozen=True)
class ImageSpec:
    """What an accepted image must look like, and how it is resized and encoded."""

    image_size: int = 256
    resize_mode: ResizeMode = "keep_ratio"
    resize_only_if_bigger: bool = False
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = 95
    min_bytes: int = 5000
    allowed_formats: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP"})
    max_pixels: int = 89_478_485
    min_width: int = 0
    min_height: int = 0
    max_width: int | None = None
    max_height: int | None = None
    max_aspect_ratio: float | None = None
    draft: bool = True


@dataclass
class ImageResult:
    """The encoded image and its sizes, or the drop reason and a message."""

    data: bytes | None = None
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    reason: str | None = None
    error: str | None = None
    phash: int | None = None  # perceptual hash of the stored pixels (neardup.phash), for near-duplicate removal
    colour_grid: bytes | None = None  # mean colour of each quadrant of the stored pixels (neardup.phash.features)

    @property
    def ok(self) -> bool:
        return self.reason is None


def _refuse(reason: str, error: str, w: int | None = None, h: int | None = None) -> ImageResult:
    return ImageResult(reason=reason, error=error, original_width=w, original_height=h)


def looks_like_text(data: bytes) -> bool:
    """HTML error pages and other text served where an image was expected."""
    head = data[:512].lstrip()
    if head[:1] in (b"<", b"{", b"["):
        return True
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(text) and sum(c.isprintable() or c.isspace() for c in text) / len(text) > 0.95


def target_size(width: int, height: int, spec: ImageSpec) -> tuple[int, int]:
    """(width, height) after resizing, before any crop or padding (albumentations' rounding,
    which img2dataset uses: SmallestMaxSize for keep_ratio/center_crop, LongestMaxSize for border and
    keep_ratio_largest)."""
    if spec.resize_mode == "no":
        return width, height
    side = min(width, height) if spec.resize_mode in ("keep_ratio", "center_crop") else max(width, height)
    if spec.resize_only_if_bigger and side <= spec.image_size:
        return width, height
    scale = spec.image_size / side
    return max(round(width * scale), 1), max(round(height * scale), 1)


def output_size(width: int, height: int, spec: ImageSpec) -> tuple[int, int]:
    """(width, height) of the stored image: the resize, then center_crop's crop or border's
    padding (img2dataset's rules, as `resize` applies them); keep_ratio_largest is border's resize
    without the padding (the long side at image_size: DataComp's download setting)."""
    s = spec.image_size
    side = min(width, height) if spec.resize_mode in ("keep_ratio", "center_crop") else max(width, height)
    if spec.resize_mode == "no" or (spec.resize_only_if_bigger and side <= s):
        return width, height
    w, h = target_size(width, height, spec)
    if spec.resize_mode == "center_crop":
        return min(w, s), min(h, s)
    if spec.resize_mode == "border":
        return max(w, s), max(h, s)
    return w, h


def check_header(width: int, height: int, fmt: str | None, spec: ImageSpec) -> ImageResult | None:
    """The refusal for an image of this size and format, or None when it passes. Besides the
    configured bounds, `image_too_large` for what the resize would make of a sliver: keep_ratio
    makes its long side huge (a 2000x1 image at 512 px is 1,024,000x512: 1.5 GB of pixels), so
    the stored size must fit `max_pixels` (else Pillow refuses to open it as a bomb) and the
    encoder's side limit (JPEG 65,500 px, WebP 16,383), and center_crop's resize before the crop
    must fit `max_pixels`. img2dataset would try and fail at encoding, or exhaust the worker's
    memory; here it is refused from the header, before decoding."""
    if fmt not in spec.allowed_formats:
        return _refuse("format_not_allowed", f"format {fmt} not in {sorted(spec.allowed_formats)}", width, height)
    if width * height > spec.max_pixels:
        return _refuse("decompression_bomb", f"{width}x{height} is over {spec.max_pixels} pixels", width, height)
    if width < spec.min_width or height < spec.min_height:
        return _refuse("image_too_small", f"{width}x{height} is under {spec.min_width}x{spec.min_height}", width, height)
    if (spec.max_width and width > spec.max_width) or (spec.max_height and height > spec.max_height):
        return _refuse("image_too_large", f"{width}x{height} is over {spec.max_width}x{spec.max_height}", width, height)
    if spec.max_aspect_ratio and max(width, height) / max(min(width, height), 1) > spec.max_aspect_ratio:
        return _refuse("bad_aspect_ratio", f"aspect ratio of {width}x{height} is over {spec.max_aspect_ratio}", width, height)
    ow, oh = output_size(width, height, spec)
    if ow * oh > spec.max_pixels:
        return _refuse("image_too_large", f"{width}x{height} would be stored as {ow}x{oh}, over {spec.max_pixels} pixels "
                       "(the decompression-bomb bound: Pillow would refuse to open it)", width, height)
    limit = _MAX_ENCODE_SIDE[spec.encode_format]
    if max(ow, oh) > limit:
        return _refuse("image_too_large", f"{width}x{height} would be stored as {ow}x{oh}, over the {spec.encode_format} "
                       f"encoder's {limit} px side limit", width, height)
    if spec.resize_mode == "center_crop" and (ow, oh) != (width, height):
        rw, rh = target_size(width, height, spec)
        if rw * rh > spec.max_pixels:
            return _refuse("image_too_large", f"{width}x{height} resized to {spec.image_size} px before its crop would be "
                           f"{rw}x{rh}, over {spec.max_pixels} pixels of memory", width, height)
    return None


def draft_eighths(width: int, height: int, spec: ImageSpec) -> int:
    """The DCT scale, in eighths, a JPEG of this size is decoded at: the smallest M/8 (M up to
    _MAX_DRAFT_EIGHTHS) at which the image still covers the target size; 8 (full size) when
    draft mode is off, the image is not made smaller, or only 6/8 or 7/8 would cover it."""
    if not spec.draft or spec.resize_mode == "no":
        return 8
    tw, th = target_size(width, height, spec)
    for m in range(1, _MAX_DRAFT_EIGHTHS + 1):
        if width * m >= 8 * tw and height * m >= 8 * th:
            return m
    return 8


def decode_jpeg_bgr(data: bytes, width: int, height: int, eighths: int = 8) -> np.ndarray | None:
    """A complete colour JPEG decoded by libjpeg-turbo (simplejpeg) at `eighths`/8 of its size, as
    a BGR array; None when this fast path does not apply (no end-of-image marker: possibly
    truncated) or the decoder reports an error or a warning (strict): Pillow then decodes.

    simplejpeg bundles libjpeg-turbo, as OpenCV does, and decodes with the same settings
    (accurate integer DCT, smooth chroma upsampling, EXIF orientation ignored as img2dataset
    does, DCT scaling), so the pixels are cv2.imdecode's exactly at every scale OpenCV offers
    (1/1, 1/2, 1/4, 1/8: tests/test_download_images.py), at less CPU: about 45% less for a
    full-size decode (OpenCV's is slow at full size), about 10% less for a scaled one."""
    if not data.endswith(b"\xff\xd9"):
        return None
    expected = (-(-height * eighths // 8), -(-width * eighths // 8))
    try:
        # libjpeg-turbo's smallest scaling factor (M/8) whose output covers this size: eighths/8.
        arr = simplejpeg.decode_jpeg(data, "BGR", min_width=expected[1], min_height=expected[0])
    except (ValueError, RuntimeError):
        return None
    if arr.ndim != 3 or arr.shape[:2] != expected:
        return None
    return arr


def _to_rgb(im: Image.Image) -> Image.Image:
    """Decoded pixels as RGB; transparency is composited on white as img2dataset does."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im.convert("I"), dtype=np.int32) >> (8 if im.mode.startswith("I;16") else 24)
        im = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGB", rgba.size, _WHITE)
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return im if im.mode == "RGB" else im.convert("RGB")


def _downscale(arr: np.ndarray, size: tuple[int, int], content: tuple[float, float], interpolation: int) -> np.ndarray:
    """`arr` resized to `size` = (width, height), where `content` is the width and height, in
    pixels of `arr`, of the whole original image. They differ after DCT scaling: libjpeg rounds
    the scaled size up (500 px at 5/8 is 313 px holding 312.5 px of picture), and resizing those
    313 px to the target would stretch the picture by up to a pixel towards its far edges (a
    measured 34 dB instead of 42 against full decodes). So the scale factors are given
    explicitly and the spare row or column is cut off."""
    nw, nh = size
    if content == (arr.shape[1], arr.shape[0]):
        return cv2.resize(arr, size, interpolation=interpolation)
    out = cv2.resize(arr, (0, 0), fx=nw / content[0], fy=nh / content[1], interpolation=interpolation)
    return out[:nh, :nw] if out.shape[:2] != (nh, nw) else out


def resize(arr: np.ndarray, spec: ImageSpec, original: tuple[int, int] | None = None, eighths: int = 8) -> np.ndarray:
    """img2dataset's resize modes on a 3-channel array (RGB or BGR alike). `original` is the
    (width, height) before any draft reduction and `eighths` the DCT scale `arr` was decoded at:
    output sizes are computed from the original, so decoding at a reduced scale never changes
    the output size. As in img2dataset, `resize_only_if_bigger` leaves a small image untouched
    (no crop, no border)."""
    h, w = arr.shape[:2]
    ow, oh = original or (w, h)
    s = spec.image_size
    if spec.resize_mode == "no":
        return arr
    side = min(ow, oh) if spec.resize_mode in ("keep_ratio", "center_crop") else max(ow, oh)
    if spec.resize_only_if_bigger and side <= s:
        return arr
    nw, nh = target_size(ow, oh, spec)
    content = (ow * eighths / 8, oh * eighths / 8) if eighths != 8 else (w, h)
    if (nw, nh) != (w, h) and side > s:
        if spec.draft and max(content[0] / nw, content[1] / nh) < _LINEAR_MAX_RATIO:
            # Draft mode, and only a little bigger than the target: at such a ratio INTER_AREA's
            # box spans 2 pixels, as bilinear does, and INTER_LINEAR's fixed-point uint8 path
            # does it ~5x faster for the same quality (tests/test_draft_psnr.py). Never taken
            # without draft mode: img2dataset's pixels.
            arr = _downscale(arr, (nw, nh), content, cv2.INTER_LINEAR)
        elif arr.size <= _FLOAT_AREA_MAX_VALUES and not (content[0] % nw == 0 and content[1] % nh == 0):
            # img2dataset's default down: INTER_AREA. OpenCV computes it in float either way and
            # rounds to uint8 at the end; on a small (draft-decoded) image its float32 path does the
            # same arithmetic ~15% faster than its uint8 one, so the same bytes come out sooner
            # (tests compare with img2dataset's pixels). Not at whole ratios (2x: 512 -> 256), where
            # OpenCV's uint8 path takes an integer shortcut that rounds differently. A full-size
            # image stays uint8: its float copy (23 MB at 1600x1200) would cost more in page
            # faults than it saves.
            arr = cv2.convertScaleAbs(_downscale(arr.astype(np.float32), (nw, nh), content, cv2.INTER_AREA))
        else:
            arr = _downscale(arr, (nw, nh), content, cv2.INTER_AREA)
    elif (nw, nh) != (w, h):
        arr = cv2.resize(arr, (nw, nh), interpolation=cv2.INTER_LANCZOS4)  # img2dataset's default up
    h, w = arr.shape[:2]
    if spec.resize_mode == "center_crop" and (h > s or w > s):
        x0, y0 = max((w - s) // 2, 0), max((h - s) // 2, 0)
        arr = np.ascontiguousarray(arr[y0 : y0 + min(s, h), x0 : x0 + min(s, w)])
    elif spec.resize_mode == "border" and (h < s or w < s):
        top, left = max(int((s - h) / 2.0), 0), max(int((s - w) / 2.0), 0)
        bottom, right = max(s, h) - h - top, max(s, w) - w - left
        arr = cv2.copyMakeBorder(arr, top, bottom, left, right, cv2.BORDER_CONSTANT, value=_WHITE)
    return arr


def encode(arr: np.ndarray, spec: ImageSpec, bgr: bool) -> bytes:
    """JPEG through OpenCV (img2dataset's encoder, same bytes settings); PNG and WebP through
    Pillow."""
    if spec.encode_format == "jpg":
        ok, buf = cv2.imencode(".jpg", arr if bgr else cv2.cvtColor(arr, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, spec.encode_quality])
        if not ok:
            raise ValueError("OpenCV could not encode the image as JPEG")
        return buf.tobytes()
    im = Image.fromarray(cv2.cvtColor(arr, cv2.COLOR_BGR2RGB) if bgr else arr)
    out = io.BytesIO()
    if spec.encode_format == "png":
        im.save(out, "PNG", compress_level=min(spec.encode_quality, 9) if spec.encode_quality <= 9 else 6)
    else:
        im.save(out, _PIL_ENCODE[spec.encode_format], quality=spec.encode_quality)
    return out.getvalue()


def process_image(data: bytes, spec: ImageSpec) -> ImageResult:
    """Check, decode, resize and encode one downloaded body. Never raises: every failure is a
    drop reason (a bad image must not crash its shard)."""
    if len(data) < spec.min_bytes:
        return _refuse("image_too_small_bytes", f"{len(data)} bytes is under {spec.min_bytes}")
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        return _refuse("decompression_bomb", str(e))
    except UnidentifiedImageError:
        if looks_like_text(data):
            return _refuse("not_an_image", "the body is text, not an image")
        return _refuse("decode_error", "unidentified image data")
    except Exception as e:  # noqa: BLE001 - any parser failure is a decode error
        return _refuse("decode_error", f"{type(e).__name__}: {e}")
    width, height = im.size
    # A JPEG with a multi-picture segment (phones write them) opens as MPO: its first picture is
    # a plain JPEG stream, which is what img2dataset and every decoder here read.
    fmt = "JPEG" if im.format == "MPO" else im.format
    try:
        refused = check_header(width, height, fmt, spec)
        if refused is not None:
            return refused
        arr, bgr, eighths = None, False, 8
        if fmt == "JPEG":
            eighths = draft_eighths(width, height, spec)
            if im.mode == "RGB":
                arr = decode_jpeg_bgr(data, width, height, eighths)
                bgr = arr is not None
            if arr is None:
                # Pillow's own draft rule (1/2, 1/4 or 1/8, when they cover the target), if any.
                drafted = im.draft("RGB", target_size(width, height, spec)) if eighths < 8 else None
                eighths = round(8 * drafted[1][2] / width) if drafted else 8
        if arr is None:
            im.load()
            arr = np.asarray(_to_rgb(im))
        out = resize(arr, spec, (width, height), eighths)
        ph, colours = features(out, bgr=bgr)  # from the pixels in memory: no decode of the encoded bytes
        return ImageResult(
            data=encode(out, spec, bgr), width=out.shape[1], height=out.shape[0], original_width=width, original_height=height,
            phash=ph, colour_grid=colours,
        )
    except Image.DecompressionBombError as e:
        return _refuse("decompression_bomb", str(e))
    except Exception as e:  # noqa: BLE001 - truncated or corrupt pixel data
        return _refuse("decode_error", f"{type(e).__name__}: {e}", width, height)
    finally:
        im.close()

"""Decode a stored image at reduced size and cut the training crop from it.

Decoding dominates a data feed's CPU time. A JPEG stored at 512 px feeding a 64 px model needs
an eighth of its pixels: Pillow's draft mode asks libjpeg to decode at 1/2, 1/4 or 1/8 scale
(DCT scaling), several times cheaper than a full decode followed by a resize, and it stops at the
smallest scale that still covers the target, so the final resize always has work left (the same
trick the download stage uses, laion_pipe/images.py). The resize and crop are then cheap: only
the region under the crop is resampled.

Crop coordinates and output sizes are computed from the image's stored size, never from the
reduced decode, so draft decoding changes pixels by resampling noise only, never geometry.
"""
from __future__ import annotations

import io
import math

import cv2
import numpy as np
from PIL import Image

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def cover_size(width: int, height: int, target_h: int, target_w: int) -> tuple[int, int]:
    """(width, height) of the image scaled (aspect kept) to the smallest size that covers
    target_h x target_w: the size before the crop."""
    scale = max(target_w / width, target_h / height)
    return max(target_w, round(width * scale)), max(target_h, round(height * scale))


def open_image(data: bytes) -> Image.Image:
    """Open without decoding pixels (Pillow reads the header only): size and format are known,
    and a draft can still be requested before the pixels are read."""
    return Image.open(io.BytesIO(data))


def load_reduced(im: Image.Image, target_h: int, target_w: int) -> Image.Image:
    """Decode `im`'s pixels as RGB, a JPEG at the smallest DCT scale that still covers the
    target crop. Raises on broken data (the caller counts it)."""
    if im.format == "JPEG":
        im.draft("RGB", cover_size(im.width, im.height, target_h, target_w))
    im.load()
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")  # transparency goes on white, as the download stage does
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im if im.mode == "RGB" else im.convert("RGB")


def crop_box(stored: tuple[int, int], target_h: int, target_w: int, center: bool, u_top: float, u_left: float,
             flip: bool) -> tuple[int, int, int, int]:
    """(resized width, resized height, top, left) of the training crop, in the frame of the image
    resized to cover the target, as SDXL's micro-conditioning records it. `u_top`, `u_left` in
    [0, 1) place a random crop; `flip` gives the crop's left edge in the mirrored image, which is
    what the model sees."""
    rw, rh = cover_size(stored[0], stored[1], target_h, target_w)
    if center:
        top, left = int(round((rh - target_h) / 2.0)), int(round((rw - target_w) / 2.0))
    else:
        top, left = math.floor(u_top * (rh - target_h + 1)), math.floor(u_left * (rw - target_w + 1))
    if flip:
        left = rw - left - target_w
    return rw, rh, top, left


def to_array(im: Image.Image, box: tuple[int, int, int, int], target_h: int, target_w: int, flip: bool) -> np.ndarray:
    """The crop as uint8 HxWx3. Only the source region under the crop is resampled, straight
    from the (possibly reduced) decode: pixels the crop throws away are never resized (the
    region is cut on whole source pixels, so the crop may sit up to one source pixel off).
    After a draft decode a JPEG is shrunk by less than 2x, where OpenCV's bilinear is within
    noise of an antialiased resize and about 2.5x faster than Pillow's; INTER_AREA beyond 2x
    (PNG, WebP: no draft), bicubic when enlarging."""
    rw, rh, top, left = box
    if flip:
        left = rw - left - target_w  # the crop's left edge before mirroring
    arr = np.asarray(im)
    sx, sy = arr.shape[1] / rw, arr.shape[0] / rh
    if sx == 1 and sy == 1:
        out = arr[top: top + target_h, left: left + target_w]
    else:
        x0, x1 = math.floor(left * sx), min(arr.shape[1], math.ceil((left + target_w) * sx))
        y0, y1 = math.floor(top * sy), min(arr.shape[0], math.ceil((top + target_h) * sy))
        f = max(sx, sy)
        inter = cv2.INTER_AREA if f > 2 else cv2.INTER_LINEAR if f > 1 else cv2.INTER_CUBIC
        out = cv2.resize(arr[y0:y1, x0:x1], (target_w, target_h), interpolation=inter)
    if flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)

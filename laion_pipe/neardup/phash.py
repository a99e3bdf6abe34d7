"""The perceptual hash of an image, as a signed 64-bit integer, its colour grid, and Hamming
distances between hashes.

pHash as imagehash computes it (the image in grey, a 32x32 thumbnail, its 2-D DCT, one bit per
coefficient of the 8x8 lowest frequencies: above their median or not), from pixels already in
memory and with OpenCV's area filter for the thumbnail instead of Pillow's Lanczos: download
hashes the array it has just resized, with no decode and no Pillow copy, for a quarter (square
images) to a half (4:3) of imagehash's CPU with the colour grid included (0.14-0.36 ms against
0.55-0.60 ms per 256 px image; `benchmarks/bench_neardup.py`). The area filter moves a few bits:
0-2 from imagehash's hash of the same image for 95% of images, at most 4
(tests/test_neardup.py holds it to that on demo scenes and photo-like images). Every hash in a
run comes from this function (download, select's legacy shards, decontamination), so they agree
with each other exactly (shards downloaded before the thumbnail's faster path, see `thumbnail`,
may differ from later ones by a bit where a thumbnail pixel's .5 rounded the other way). Hashes
of the median split have exactly 32 bits set when no two coefficients tie, so distances between
them are even.

Re-encodes and resizes move 0-4 bits, crops and logo overlays often 10-30. pHash reads only
brightness: two distinct pictures with the same layout in other colours hash alike (the demo
world's flat scenes: a yellow circle on black and a white circle on blue at the same place).
The colour grid settles those: the mean colour of each quadrant of the same thumbnail, 12
bytes (R, G, B of the top-left, top-right, bottom-left, bottom-right quarter); a re-encode
moves it by a few levels, a distinct scene by tens (`colour_difference`).

Stored as int64 (parquet and pandas have no convenient uint64): the bits of the unsigned hash,
reinterpreted. Null means "no hash" (an image not stored, or a shard written before hashing).
"""
from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image
from scipy.fft import dct

BITS = 64
THUMB = 32
"""Side of the grey thumbnail the DCT reads (imagehash: hash_size 8 x highfreq_factor 4)."""
COLOUR_BYTES = 12
_LOW = dct(np.eye(THUMB), axis=0)[:8]
"""The 8 lowest DCT-II basis rows (scipy's unnormalised scale, as imagehash's scipy.fftpack.dct):
_LOW @ X @ _LOW.T is the 8x8 low-frequency corner of the thumbnail's 2-D DCT."""


def _array(image: Image.Image | np.ndarray, bgr: bool) -> tuple[np.ndarray, bool]:
    if isinstance(image, np.ndarray):
        arr = image
    else:
        arr, bgr = np.asarray(image.convert("RGB")), False
    if arr.ndim == 2:
        arr = cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
        bgr = False
    elif arr.shape[2] == 4:
        arr = arr[..., :3]
    return arr, bgr


def thumbnail(arr: np.ndarray) -> np.ndarray:
    """The THUMBxTHUMB area-filtered thumbnail of an HxWx3 uint8 array (OpenCV's INTER_AREA).

    OpenCV's area filter takes a slow general path when a ratio is not whole (256x341 -> 32x32:
    0.24 ms, 5x its 256x256 time; a tenth of process_image's CPU). Area averaging is separable,
    so when only one side is a multiple of THUMB (a keep_ratio resize to 256, 384 or 512 px makes
    one so), that side is averaged in whole blocks first, in float32, and the filter runs on the
    32-row (or -column) result: 0.09 ms (256x341) and 0.14 ms (341x256), the same pixels up to
    a .5 rounded the other way (rounded once, at the end, as OpenCV does; tests/test_neardup.py
    compares the two on photos)."""
    h, w = arr.shape[:2]
    if arr.dtype == np.uint8 and arr.ndim == 3 and h >= THUMB and w >= THUMB and (h % THUMB == 0) != (w % THUMB == 0):
        if h % THUMB == 0:  # whole blocks of rows: strided adds of contiguous rows
            step = h // THUMB
            part = arr[0::step].astype(np.float32)
            for k in range(1, step):
                part += arr[k::step]
            part *= np.float32(1 / step)
        else:  # whole blocks of columns: OpenCV's whole-ratio path, in float (no rounding yet)
            part = cv2.resize(arr.astype(np.float32), (THUMB, h), interpolation=cv2.INTER_AREA)
        return np.rint(cv2.resize(part, (THUMB, THUMB), interpolation=cv2.INTER_AREA)).astype(np.uint8)
    return cv2.resize(np.ascontiguousarray(arr), (THUMB, THUMB), interpolation=cv2.INTER_AREA)


def features(image: Image.Image | np.ndarray, *, bgr: bool = False) -> tuple[int, bytes]:
    """(pHash as int64, colour grid) of a PIL image or an HxWx3 uint8 array (RGB, or BGR with
    `bgr`): one 32x32 area-filtered thumbnail serves both."""
    arr, bgr = _array(image, bgr)
    thumb = thumbnail(arr)
    grey = cv2.cvtColor(thumb, cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY)
    quads = thumb.reshape(2, THUMB // 2, 2, THUMB // 2, 3).mean(axis=(1, 3))
    if bgr:
        quads = quads[..., ::-1]
    return hash_of_thumbnail(grey), np.rint(quads).astype(np.uint8).tobytes()


def hash_of_thumbnail(grey: np.ndarray) -> int:
    """The pHash (int64) of a 32x32 grey thumbnail: imagehash's DCT, median split and bit order."""
    # rounded: a symmetric picture has coefficients that are exactly 0, which the products leave as
    # +-1e-13 noise; unrounded, that noise would decide their bits (coefficients reach 1e6, so 1e-6
    # is far below any real one)
    low = np.round(_LOW @ np.asarray(grey, dtype=np.float64) @ _LOW.T, 6)
    bits = (low > np.median(low)).reshape(-1)
    value = int(np.packbits(bits.astype(np.uint8)).view(">u8")[0])
    return value - (1 << 64) if value >= (1 << 63) else value


def phash(image: Image.Image | np.ndarray, *, bgr: bool = False) -> int:
    """The pHash of a PIL image or an HxWx3 uint8 array (RGB, or BGR with `bgr`), as int64."""
    return features(image, bgr=bgr)[0]


def features_of_bytes(data: bytes) -> tuple[int, bytes] | None:
    """(pHash, colour grid) of encoded image bytes; None when they do not decode."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return features(im.convert("RGB"))
    except Exception:  # noqa: BLE001 - a broken image has no hash
        return None


def phash_of_bytes(data: bytes) -> int | None:
    """The pHash of encoded image bytes; None when they do not decode."""
    f = features_of_bytes(data)
    return None if f is None else f[0]


def colour_difference(a, b) -> np.ndarray:
    """The largest difference, in levels of 255, between two colour grids' 12 values
    ([..., 12] uint8 arrays, broadcasting)."""
    return np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max(axis=-1)


def colour_array(values) -> tuple[np.ndarray, np.ndarray]:
    """[N, 12] uint8 colour grids and an [N] validity mask from a sequence of 12-byte values
    (None, or a value of another length, for a row without one)."""
    vals = list(values)
    out = np.zeros((len(vals), COLOUR_BYTES), dtype=np.uint8)
    valid = np.zeros(len(vals), dtype=bool)
    for i, v in enumerate(vals):
        if v is not None and len(v) == COLOUR_BYTES:
            out[i] = np.frombuffer(v, dtype=np.uint8)
            valid[i] = True
    return out, valid


def as_unsigned(values) -> np.ndarray:
    """int64 hashes as uint64 (the same bits)."""
    return np.asarray(values, dtype=np.int64).view(np.uint64)


def hamming(a, b) -> np.ndarray:
    """Bitwise Hamming distance between int64/uint64 hashes (broadcasting)."""
    x = np.bitwise_xor(as_unsigned(a), as_unsigned(b))
    return np.bitwise_count(x) if hasattr(np, "bitwise_count") else _popcount(x)


def _popcount(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    out = np.zeros(x.shape, dtype=np.uint8)
    for shift in range(0, 64, 8):
        out += _BYTE_COUNTS[((x >> np.uint64(shift)) & np.uint64(0xFF)).astype(np.intp)]
    return out


_BYTE_COUNTS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def bands(values, n_bands: int) -> np.ndarray:
    """[N, n_bands] band values: the hash cut into `n_bands` contiguous bit ranges. Two hashes
    within d bits of each other agree exactly on at least one of d + 1 bands (pigeonhole), so
    bucketing by (band, value) finds every such pair."""
    u = as_unsigned(values)
    edges = np.linspace(0, BITS, n_bands + 1).round().astype(int)
    out = np.empty((len(u), n_bands), dtype=np.uint64)
    for i in range(n_bands):
        width = edges[i + 1] - edges[i]
        mask = np.uint64((1 << int(width)) - 1) if width < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
        out[:, i] = (u >> np.uint64(edges[i])) & mask
    return out

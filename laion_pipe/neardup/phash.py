"""The perceptual hash of an image, as a signed 64-bit integer, and Hamming distances between them.

imagehash's pHash: the image in grey, resized to 32x32 (Lanczos), its 2-D DCT, and one bit per
coefficient of the 8x8 lowest frequencies: above their median or not. Re-encodes and resizes
move few bits (0-4 on the demo world's flat synthetic scenes, which are a hard case: distinct
scenes can be as close as 4-6 bits); crops and overlays move 10-30.

Stored as int64 (parquet and pandas have no convenient uint64): the bits of the unsigned hash,
reinterpreted. Null means "no hash" (an image not stored, or a shard written before hashing).
"""
from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image

BITS = 64


def phash(image: Image.Image | np.ndarray, *, bgr: bool = False) -> int:
    """The pHash of a PIL image or an HxWx3 uint8 array (RGB, or BGR with `bgr`), as int64."""
    if isinstance(image, np.ndarray):
        arr = image[..., ::-1] if bgr and image.ndim == 3 else image
        image = Image.fromarray(np.ascontiguousarray(arr))
    bits = imagehash.phash(image).hash.reshape(-1)
    value = int(np.packbits(bits.astype(np.uint8)).view(">u8")[0])
    return value - (1 << 64) if value >= (1 << 63) else value


def phash_of_bytes(data: bytes) -> int | None:
    """The pHash of encoded image bytes; None when they do not decode."""
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            return phash(im.convert("RGB"))
    except Exception:  # noqa: BLE001 - a broken image has no hash
        return None


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

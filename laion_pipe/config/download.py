"""The `download:` section: HTTP client, safety and image checks."""
from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator

from .base import Section


class DownloadConfig(Section):
    # --- output images (img2dataset's options, same names and defaults where LAION used them)
    image_size: int = Field(
        256, ge=1, description="target size in pixels (smallest side for keep_ratio/center_crop, largest for border/keep_ratio_largest)"
    )
    resize_mode: Literal["keep_ratio", "center_crop", "border", "keep_ratio_largest", "no"] = Field(
        "keep_ratio",
        description="img2dataset's resize modes; keep_ratio_largest: the long side at image_size, no padding (DataComp's); "
        "'no' keeps the original size (still re-encoded)",
    )
    resize_only_if_bigger: bool = Field(False, description="never upscale: leave images whose reference side is under image_size as they are")
    encode_format: Literal["jpg", "png", "webp"] = Field("jpg", description="format of the images written to the tar")
    encode_quality: int = Field(95, ge=0, le=100, description="JPEG/WebP quality (PNG: compression level 0-9)")
    draft: bool = Field(
        True,
        description="draft mode: decode JPEGs at a reduced DCT scale (1/8 to 5/8) when the target is that much smaller, and resize "
        "bilinearly when under 1.5x is left (same output up to resampling noise: mean PSNR over 40 dB against img2dataset's "
        "full decode and INTER_AREA, tests/test_draft_psnr.py; ~2x less CPU per image); false: img2dataset's exact pixels",
    )
    decode_threads: int = Field(
        0,
        ge=0,
        description="threads per shard that decode, resize and encode images. 0 (default): on the network loop's own thread, "
        "which costs the least CPU per image when every core runs its own shard, as in any real download (bench_download.py: "
        "3.9-4.1 vs 4.4 ms/image with 2, about a tenth more images/s); the codecs release the GIL, so 1-2 help a worker that has spare "
        "cores and fewer shards than cores",
    )

    # --- HTTP client
    threads: int = Field(64, ge=1, description="requests in flight per shard (asyncio, not OS threads)")
    per_host: int = Field(16, ge=1, description="concurrent connections per host")
    timeout: float = Field(10.0, gt=0, description="total seconds per request, redirects included (time spent waiting for a per-host slot excluded)")
    connect_timeout: float = Field(5.0, gt=0, description="seconds to open a connection")
    read_timeout: float = Field(10.0, gt=0, description="seconds without receiving any byte")
    retries: int = Field(2, ge=0, description="retries for transient failures (timeouts, connection errors, truncated bodies, 5xx, 429)")
    backoff: float = Field(0.5, ge=0, description="first retry delay in seconds; doubles each retry, with jitter")
    max_retry_wait: float = Field(30.0, ge=0, description="longest Retry-After / backoff wait honoured; a longer one fails the sample (transient, see --retry-failed)")
    max_bytes: int = Field(20_000_000, ge=1, description="response size cap, enforced on Content-Length and while streaming")
    max_redirects: int = Field(5, ge=0, description="redirect hops followed before giving up")
    dns_cache_ttl: int = Field(300, ge=0, description="seconds a DNS answer is reused")
    user_agent: str = Field("laion-pipe/0.1 (+https://github.com/laion-pipe)", description="User-Agent header sent with every request")
    user_agent_token: str | None = Field(
        None, description="name sites use for us in X-Robots-Tag ('laion-pipe: noai'); default: the User-Agent's product token"
    )

    # --- safety
    allow_cidrs: list[str] = Field(
        [], description="non-public networks that may be contacted anyway (tests/demo: 127.0.0.1/32); every other non-public address is refused"
    )
    opt_out_tokens: list[str] = Field(
        ["noai", "noimageai", "noindex", "noimageindex"],
        description="X-Robots-Tag directives that opt an image out (img2dataset's default disallowed_header_directives)",
    )

    # --- image checks (each failure is a drop reason)
    min_bytes: int = Field(5000, ge=0, description="LAION dropped images under 5 kB")
    allowed_formats: list[str] = Field(["JPEG", "PNG", "WEBP"], description="Pillow format names kept (LAION kept JPEG, PNG, WebP)")
    max_pixels: int = Field(89_478_485, ge=1, description="decompression bomb limit (width x height), checked on the header before decoding; "
                            "an image whose resize would exceed it (a sliver at keep_ratio or center_crop) is image_too_large")
    min_width: int = Field(0, ge=0, description="narrower images are dropped (image_too_small)")
    min_height: int = Field(0, ge=0, description="lower images are dropped (image_too_small)")
    max_width: int | None = Field(None, ge=1, description="wider images are dropped (image_too_large)")
    max_height: int | None = Field(None, ge=1, description="higher images are dropped (image_too_large)")
    max_aspect_ratio: float | None = Field(None, ge=1, description="long side / short side above this is dropped (bad_aspect_ratio)")

    @field_validator("allow_cidrs")
    @classmethod
    def _valid_cidrs(cls, v: list[str]) -> list[str]:
        for c in v:
            ipaddress.ip_network(c, strict=False)  # raises ValueError naming the bad value
        return v

    @field_validator("allowed_formats")
    @classmethod
    def _upper_formats(cls, v: list[str]) -> list[str]:
        return [f.upper() for f in v]

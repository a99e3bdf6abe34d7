"""The HTTP client of the download stage: many requests in flight on one asyncio loop, safe by
default, and every outcome a drop reason rather than an exception.

Why aiohttp: one event loop keeps hundreds of requests in flight with keep-alive connection
reuse and a DNS cache, and its connector takes a socket factory, which receives the exact
socket address about to be connected to. The address guard sits there (and in the resolver, so
a host that only resolves to refused addresses fails before any socket exists), so every
connection, including each redirect hop and each DNS answer, is checked where it matters:
DNS rebinding cannot pass. benchmarks/bench_download.py --clients measures it against httpx and
urllib3 on the same loopback server.

What the client does per URL:
- redirects are followed by hand (each hop re-enters the guard, a loop or more than
  `max_redirects` hops is a drop reason);
- a per-host slot limit (`per_host`); the total timeout counts only time spent holding a slot,
  so a queue in front of a slow host does not time out the queued requests;
- connect / read (between bytes) / total timeouts;
- transient failures (timeouts, connection errors, truncated bodies, 5xx, 429) are retried
  with exponential backoff and jitter, honouring `Retry-After` up to `max_retry_wait`;
- `X-Robots-Tag` opt-outs are checked on the headers, before the body is read;
- the body is capped at `max_bytes`: a larger Content-Length is refused without reading, and a
  body without one is cut off while streaming.
"""
from __future__ import annotations

import asyncio
import random
import socket
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from .guard import AddressGuard, BlockedAddress, opted_out, user_agent_token

if TYPE_CHECKING:
    from ..config.download import DownloadConfig

TRANSIENT_REASONS: frozenset[str] = frozenset({"timeout", "connection_error", "truncated_body", "http_5xx", "http_429"})
"""Failures worth trying again later (`--retry-failed`); every other reason is final."""

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
ACCEPT = "image/jpeg,image/png,image/webp,image/*;q=0.8,*/*;q=0.5"


@dataclass
class FetchResult:
    """The body of a URL, or why there is none (`reason` is one of schema.DROP_REASONS)."""

    url: str
    body: bytes | None = None
    reason: str | None = None
    error: str | None = None
    status: int | None = None
    final_url: str | None = None
    attempts: int = 0
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def transient(self) -> bool:
        return self.reason in TRANSIENT_REASONS


class GuardedResolver(AbstractResolver):
    """Resolves with the system resolver, then keeps only the addresses the guard allows, so a
    host whose every address is refused fails before a socket is created."""

    def __init__(self, guard: AddressGuard, inner: AbstractResolver | None = None):
        self.guard = guard
        self._inner = inner or ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        infos = await self._inner.resolve(host, port, family)
        allowed = [i for i in infos if self.guard.allowed(i["host"])]
        if not allowed:
            first = infos[0]["host"] if infos else host
            raise BlockedAddress(first, f"{host} resolves only to refused addresses ({self.guard.refusal(first)})")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def guarded_socket_factory(guard: AddressGuard):
    """aiohttp socket factory that refuses, before connecting, any address the guard refuses.
    It sees the exact (address, port) the socket is then connected to."""

    def factory(addr_info: tuple) -> socket.socket:
        family, type_, proto, _canon, sockaddr = addr_info
        guard.check_sockaddr(sockaddr)
        return socket.socket(family=family, type=type_, proto=proto)

    return factory


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def _find_blocked(exc: BaseException) -> BlockedAddress | None:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, BlockedAddress):
            return cur
        os_error = getattr(cur, "os_error", None)
        if isinstance(os_error, BlockedAddress):
            return os_error
        cur = cur.__cause__ or cur.__context__
    if "refusing to connect to" in str(exc):  # several addresses, each refused: one OSError says so
        return BlockedAddress("?", str(exc))
    return None


def classify_exception(exc: BaseException) -> tuple[str, str]:
    """(drop reason, message) for an exception raised while fetching."""
    blocked = _find_blocked(exc)
    if blocked is not None:
        return "blocked_address", str(blocked)
    msg = f"{type(exc).__name__}: {exc}"[:300]
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timeout", msg
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "truncated_body", msg
    if isinstance(exc, aiohttp.ClientSSLError):
        return "tls_error", msg  # a bad certificate stays bad: not worth a retry
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        # "try again" answers are transient; a name that does not exist is final.
        transient = isinstance(exc.os_error, socket.gaierror) and exc.os_error.errno == socket.EAI_AGAIN
        return ("connection_error" if transient else "dns_error"), msg
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError | ValueError):
        return "bad_url", msg
    if isinstance(exc, aiohttp.ClientResponseError):
        return "http_error", msg
    if isinstance(exc, aiohttp.ClientConnectionError | OSError):
        return "connection_error", msg
    return "http_error", msg


class _Redirect(Exception):
    def __init__(self, location: URL):
        self.location = location


class Fetcher:
    """`async with Fetcher(cfg) as f: result = await f.fetch(url)`; one per shard (per loop)."""

    def __init__(self, cfg: DownloadConfig, resolver: AbstractResolver | None = None):
        """`resolver`: the name resolver under the guard (default: the system's, in threads)."""
        self.cfg = cfg
        self._inner_resolver = resolver
        self.guard = AddressGuard.from_cidrs(cfg.allow_cidrs)
        self.ua_token = cfg.user_agent_token or user_agent_token(cfg.user_agent)
        self._headers = {"User-Agent": cfg.user_agent, "Accept": ACCEPT, "Accept-Encoding": "identity"}
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=cfg.connect_timeout, sock_read=cfg.read_timeout)
        self._host_slots: dict[tuple[str, int | None], asyncio.Semaphore] = {}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Fetcher:
        connector = aiohttp.TCPConnector(
            limit=max(self.cfg.threads, self.cfg.per_host),
            limit_per_host=self.cfg.per_host,
            use_dns_cache=True,
            ttl_dns_cache=self.cfg.dns_cache_ttl,
            resolver=GuardedResolver(self.guard, self._inner_resolver),
            socket_factory=guarded_socket_factory(self.guard),
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,  # a proxy would hide the address we connect to from the guard
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=self._timeout,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _slot(self, url: URL) -> asyncio.Semaphore:
        key = (url.host or "", url.port)
        sem = self._host_slots.get(key)
        if sem is None:
            sem = self._host_slots[key] = asyncio.Semaphore(self.cfg.per_host)
        return sem

    async def fetch(self, url: str) -> FetchResult:
        """Fetch one URL with retries; never raises (except cancellation)."""
        attempts = 0
        while True:
            attempts += 1
            result = await self._attempt(url)
            result.attempts = attempts
            if result.ok or not result.transient or attempts > self.cfg.retries:
                return result
            delay = self.cfg.backoff * (2 ** (attempts - 1)) * (1 + random.random())
            if result.retry_after is not None:
                delay = max(delay, result.retry_after)
            if delay > self.cfg.max_retry_wait:
                result.error = f"{result.error} (retry in {delay:.0f}s is over max_retry_wait)"
                return result
            await asyncio.sleep(delay)

    async def _attempt(self, url: str) -> FetchResult:
        """One try: follow redirects by hand within the total time budget."""
        try:
            current = URL(url)
        except (ValueError, TypeError) as e:
            return FetchResult(url, reason="bad_url", error=str(e)[:300])
        seen = {str(current)}
        budget = self.cfg.timeout
        for _hop in range(self.cfg.max_redirects + 1):
            if current.scheme not in ("http", "https") or not current.host:
                return FetchResult(url, reason="bad_url", error=f"not an http(s) URL: {str(current)[:200]}")
            try:
                async with self._slot(current):
                    started = time.monotonic()
                    try:
                        return await asyncio.wait_for(self._request(url, current), timeout=budget)
                    finally:
                        budget -= time.monotonic() - started
            except _Redirect as r:
                nxt = r.location
                if str(nxt) in seen:
                    return FetchResult(url, reason="redirect_loop", error=f"redirect loop at {str(nxt)[:200]}", final_url=str(current))
                seen.add(str(nxt))
                current = nxt
                if budget <= 0:
                    return FetchResult(url, reason="timeout", error="total timeout during redirects", final_url=str(current))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - every failure becomes a drop reason
                reason, msg = classify_exception(e)
                return FetchResult(url, reason=reason, error=msg, final_url=str(current))
        return FetchResult(url, reason="too_many_redirects", error=f"more than {self.cfg.max_redirects} redirects", final_url=str(current))

    async def _request(self, url: str, current: URL) -> FetchResult:
        assert self._session is not None, "use `async with Fetcher(...)`"
        async with self._session.get(current, allow_redirects=False, headers=self._headers) as resp:
            # Belt and braces: the socket factory checked this address before connecting.
            conn = resp.connection
            peer = conn.transport.get_extra_info("peername") if conn is not None and conn.transport else None
            if peer:
                self.guard.check_sockaddr(peer)
            status = resp.status
            final = str(resp.url)
            if status in REDIRECT_STATUSES:
                location = resp.headers.get("Location")
                if not location:
                    return FetchResult(url, reason="http_error", error=f"HTTP {status} without Location", status=status, final_url=final)
                raise _Redirect(resp.url.join(URL(location)))
            if status == 429 or status >= 500:
                return FetchResult(
                    url,
                    reason="http_429" if status == 429 else "http_5xx",
                    error=f"HTTP {status}",
                    status=status,
                    final_url=final,
                    retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                )
            if status == 404:
                return FetchResult(url, reason="http_404", error="HTTP 404", status=status, final_url=final)
            if not 200 <= status < 300:
                return FetchResult(url, reason="http_error", error=f"HTTP {status}", status=status, final_url=final)
            directive = opted_out(resp.headers.getall("X-Robots-Tag", []), self.ua_token, self.cfg.opt_out_tokens)
            if directive:
                return FetchResult(url, reason="opt_out", error=f"X-Robots-Tag: {directive}", status=status, final_url=final)
            body = await self._read_capped(resp)
            if body is None:
                return FetchResult(url, reason="body_too_large", error=f"body over {self.cfg.max_bytes} bytes", status=status, final_url=final)
            return FetchResult(url, body=body, status=status, final_url=final)

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes | None:
        """The body, or None when it is over the cap (checked on Content-Length first, then
        while streaming, so an oversized body is never held in memory)."""
        cap = self.cfg.max_bytes
        declared = resp.content_length
        if declared is not None and declared > cap:
            return None
        encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("identity", "")
        if declared is not None and not encoded:
            return await resp.read()
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > cap:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

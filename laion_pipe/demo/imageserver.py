"""A small HTTP/1.1 image server on loopback that can also misbehave on purpose.

The download stage has to survive the real web: 404s, flaky 500s, 429 with Retry-After,
servers that stall, bodies cut short, Content-Lengths that lie, redirect chains and loops,
HTML where an image should be, opt-out headers. Frameworks make most of those impossible to
produce (they fix up lengths, refuse to stall mid-body), so this server writes raw HTTP on
asyncio streams. It serves the tests, the demo world and the download benchmark (keep-alive,
bytes served from memory), always bound to a loopback address.

    with ImageServer() as srv:
        srv.route("/a.jpg", static(jpeg_bytes))
        srv.route("/flaky.jpg", sequence(status(500), static(jpeg_bytes)))
        url = srv.url("/a.jpg")
"""
from __future__ import annotations

import asyncio
import ipaddress
import ssl as ssl_module
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

_REASONS = {
    200: "OK", 301: "Moved Permanently", 302: "Found", 303: "See Other", 307: "Temporary Redirect",
    308: "Permanent Redirect", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
}


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    hit: int  # 1 for the first request of this path, 2 for the second...


@dataclass
class Reply:
    """What a handler wants sent. `raw` bypasses everything: the bytes are written as they are."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = "image/jpeg"
    declared_length: int | None = None  # Content-Length to announce (default: len(body))
    chunked: bool = False  # no Content-Length: Transfer-Encoding chunked
    send_bytes: int | None = None  # send only this many body bytes...
    then: str = "keep"  # ...then "keep" the connection, "close" it, or "stall" forever
    delay: float = 0.0  # seconds before anything is sent


Handler = Callable[[Request], Awaitable[Reply] | Reply]


def static(body: bytes, content_type: str = "image/jpeg", headers: dict[str, str] | None = None, status_code: int = 200) -> Handler:
    return lambda req: Reply(status_code, body, dict(headers or {}), content_type)


def status(code: int, headers: dict[str, str] | None = None, body: bytes = b"") -> Handler:
    return lambda req: Reply(code, body or f"{code}\n".encode(), dict(headers or {}), "text/plain")


def redirect(location: str, code: int = 302) -> Handler:
    return lambda req: Reply(code, b"", {"Location": location}, "text/plain")


def sequence(*handlers: Handler) -> Handler:
    """The n-th request of the path gets the n-th handler; the last one repeats."""

    def handle(req: Request):
        return handlers[min(req.hit, len(handlers)) - 1](req)

    return handle


def delayed(seconds: float, handler: Handler) -> Handler:
    """`handler`'s reply, sent after `seconds` (a slow server, not a broken one)."""
    return lambda req: replace(handler(req), delay=seconds)


def stall(seconds: float = 3600.0) -> Handler:
    """Accept the request and send nothing (a read timeout for the client)."""
    return lambda req: Reply(delay=seconds, content_type=None)


def truncated(body: bytes, keep: float = 0.5, content_type: str = "image/jpeg") -> Handler:
    """Announce the full length, send part of the body, close the connection."""
    return lambda req: Reply(200, body, {}, content_type, send_bytes=int(len(body) * keep), then="close")


def lying_length(body: bytes, declared: int, then: str = "stall", content_type: str = "image/jpeg") -> Handler:
    """Announce `declared` bytes but send the body as it is; then stall or close."""
    return lambda req: Reply(200, body, {}, content_type, declared_length=declared, then=then)


def chunked(body: bytes, content_type: str = "image/jpeg") -> Handler:
    """Stream the body with Transfer-Encoding: chunked (no Content-Length to check up front)."""
    return lambda req: Reply(200, body, {}, content_type, chunked=True)


class ImageServer:
    """Serves routes (exact paths) and blob folders (`/prefix/<anything>/<name>` -> blobs[name])
    from a background thread; counts connections and hits so tests can assert what reached it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, ssl: ssl_module.SSLContext | None = None):
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"ImageServer only binds loopback addresses, not {host}")
        self.host = host
        self.port = port
        self.ssl = ssl
        self.routes: dict[str, Handler] = {}
        self.blobs: dict[str, tuple[dict[str, bytes], str]] = {}
        self.hits: Counter = Counter()
        self.connections = 0  # accepted TCP connections, ever
        self.requests = 0
        self.active = 0  # requests being answered now
        self.max_active = 0
        self.last_request: dict[str, Request] = {}  # path -> its latest request (headers included)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    # --- configuration
    def route(self, path: str, handler: Handler) -> str:
        self.routes[path] = handler
        return self.url(path)

    def add_blobs(self, prefix: str, blobs: dict[str, bytes], content_type: str = "image/jpeg") -> None:
        self.blobs[prefix.rstrip("/") + "/"] = (blobs, content_type)

    def url(self, path: str) -> str:
        return f"{'https' if self.ssl else 'http'}://{self.host}:{self.port}{path}"

    # --- lifecycle
    def start(self) -> ImageServer:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._serve, self.host, self.port, backlog=1024, reuse_address=True, ssl=self.ssl)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as e:  # noqa: BLE001 - reported to start()
                errors.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=f"imageserver-{self.host}", daemon=True)
        self._thread.start()
        ready.wait()
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._server is None:
            return

        async def shutdown() -> None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

        fut = asyncio.run_coroutine_threadsafe(shutdown(), loop)
        try:
            fut.result(timeout=5)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = None
            self._loop = None

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- serving
    def _handler_for(self, path: str) -> Handler | None:
        path = path.split("?", 1)[0]
        h = self.routes.get(path)
        if h is not None:
            return h
        for prefix, (blobs, ctype) in self.blobs.items():
            if path.startswith(prefix):
                body = blobs.get(path.rsplit("/", 1)[-1])
                if body is not None:
                    return static(body, ctype)
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, target, version = lines[0].split(" ", 2)
                except ValueError:
                    return
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                with self._lock:
                    self.requests += 1
                    self.hits[target] += 1
                    hit = self.hits[target]
                    self.active += 1
                    self.max_active = max(self.max_active, self.active)
                request = Request(method, target, headers, hit)
                self.last_request[target] = request
                try:
                    handler = self._handler_for(target)
                    reply = Reply(404, b"not found\n", {}, "text/plain") if handler is None else handler(request)
                    if asyncio.iscoroutine(reply):
                        reply = await reply
                    keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                    sent = await self._send(writer, reply, keep, method == "HEAD")
                finally:
                    with self._lock:
                        self.active -= 1
                if not sent:
                    return
                if not keep:
                    return
        except asyncio.CancelledError:
            return  # server shutting down
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)  # type: ignore[arg-type]
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass

    async def _send(self, writer: asyncio.StreamWriter, r: Reply, keep: bool, head_only: bool) -> bool:
        """Write one reply; False when the connection must end afterwards."""
        if r.delay:
            await asyncio.sleep(r.delay)
            if r.content_type is None and not r.body:
                return False  # a pure stall: close after the delay
        hdr = [f"HTTP/1.1 {r.status} {_REASONS.get(r.status, 'Status')}"]
        if r.content_type:
            hdr.append(f"Content-Type: {r.content_type}")
        for k, v in r.headers.items():
            hdr.append(f"{k}: {v}")
        if r.chunked:
            hdr.append("Transfer-Encoding: chunked")
        else:
            hdr.append(f"Content-Length: {r.declared_length if r.declared_length is not None else len(r.body)}")
        hdr.append(f"Connection: {'keep-alive' if keep and r.then == 'keep' else 'close'}")
        body = b"" if head_only else r.body
        if r.send_bytes is not None:
            body = body[: r.send_bytes]
        if r.chunked and not head_only:
            step = 64 * 1024
            parts = [b"%x\r\n%s\r\n" % (len(body[i : i + step]), body[i : i + step]) for i in range(0, len(body), step)]
            body = b"".join(parts) + b"0\r\n\r\n"
        try:
            writer.write(("\r\n".join(hdr) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
        except ConnectionError:
            return False
        if r.then == "stall":
            await asyncio.sleep(3600)
            return False
        if r.then == "close" or r.declared_length is not None:
            return False
        return keep

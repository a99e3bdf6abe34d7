"""The HTTP client against misbehaving loopback servers (all traffic to 127.0.0.x)."""
from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import time

import pytest
from aiohttp.abc import AbstractResolver

from laion_pipe.demo import imageserver as srv
from laion_pipe.net.fetch import TRANSIENT_REASONS, Fetcher, parse_retry_after
from servers import jpeg, misbehaving_world, world_config

pytestmark = pytest.mark.timeout(120)


def fetch_all(cfg, urls, resolver=None):
    async def main():
        async with Fetcher(cfg, resolver=resolver) as f:
            return await asyncio.gather(*(f.fetch(u) for u in urls))

    return asyncio.run(main())


def fetch_one(cfg, url, resolver=None):
    return fetch_all(cfg, [url], resolver)[0]


@pytest.fixture(scope="module")
def world():
    with misbehaving_world() as w:
        yield w


def test_every_misbehaviour_ends_with_its_reason(world):
    """The fetch-level part of each case: download failures carry their reason, everything
    else arrives as a body (image problems are the image module's business)."""
    cfg = world_config()
    cases = world.cases
    results = fetch_all(cfg, [world.url(c.path) for c in cases])
    for case, res in zip(cases, results):
        if case.status == "failed_to_download":
            if "decode_error" in case.reasons and res.ok:
                continue  # /length-less.jpg: a cut body, refused later by the decoder
            assert res.reason in case.reasons, (case.path, res.reason, res.error)
            assert res.body is None
        else:
            assert res.ok, (case.path, res.reason, res.error)
            assert res.body
    assert world.outsider.connections == 0, "the outsider on 127.0.0.2 must never be connected to"


def test_retries_transient_failures_only(world):
    cfg = world_config(retries=2, backoff=0.01)
    before = dict(world.server.hits)
    r404, r503 = fetch_all(cfg, [world.url("/missing.jpg"), world.url("/always500.jpg")])
    assert (r404.reason, r404.attempts) == ("http_404", 1)
    assert not r404.transient
    assert (r503.reason, r503.attempts) == ("http_5xx", 3)
    assert r503.transient
    assert world.server.hits["/missing.jpg"] - before.get("/missing.jpg", 0) == 1
    assert world.server.hits["/always500.jpg"] - before.get("/always500.jpg", 0) == 3


def test_retry_after_is_honoured():
    with srv.ImageServer() as s:
        s.route("/busy.jpg", srv.sequence(srv.status(429, {"Retry-After": "1"}), srv.static(jpeg())))
        t0 = time.monotonic()
        res = fetch_one(world_config(backoff=0.01), s.url("/busy.jpg"))
        waited = time.monotonic() - t0
    assert res.ok and res.attempts == 2
    assert waited >= 0.9, "the retry must wait for Retry-After, not just the 10 ms backoff"


def test_retry_after_over_the_limit_gives_up_at_once():
    with srv.ImageServer() as s:
        s.route("/busy.jpg", srv.status(429, {"Retry-After": "3600"}))
        res = fetch_one(world_config(max_retry_wait=5), s.url("/busy.jpg"))
        assert (res.reason, res.attempts) == ("http_429", 1)
        assert res.transient and s.hits["/busy.jpg"] == 1


def test_parse_retry_after():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_keep_alive_reuses_connections():
    with srv.ImageServer() as s:
        s.route("/a.jpg", srv.static(jpeg()))
        urls = [s.url("/a.jpg?i=%d" % i) for i in range(60)]
        results = fetch_all(world_config(per_host=4, threads=4), urls)
        assert all(r.ok for r in results)
        assert s.requests == 60
        assert s.connections <= 4, f"{s.connections} connections for 60 requests"


def test_per_host_limit():
    with srv.ImageServer() as s:
        s.route("/slow.jpg", srv.delayed(0.2, srv.static(jpeg())))
        results = fetch_all(world_config(per_host=3, threads=32), [s.url("/slow.jpg?%d" % i) for i in range(12)])
        assert all(r.ok for r in results)
        assert s.max_active == 3


def test_waiting_for_a_host_slot_does_not_eat_the_total_timeout():
    with srv.ImageServer() as s:
        s.route("/slow.jpg", srv.delayed(0.3, srv.static(jpeg())))
        cfg = world_config(per_host=1, timeout=1.0, read_timeout=1.0, retries=0)
        results = fetch_all(cfg, [s.url("/slow.jpg?%d" % i) for i in range(6)])  # 1.8 s of queue
        assert all(r.ok for r in results), [r.reason for r in results]


def test_total_timeout_bounds_a_slow_response():
    with srv.ImageServer() as s:
        s.route("/slow.jpg", srv.delayed(2.0, srv.static(jpeg())))
        res = fetch_one(world_config(timeout=0.5, read_timeout=5, retries=0), s.url("/slow.jpg"))
        assert res.reason == "timeout"


def test_size_cap_is_enforced_without_reading_the_body():
    body = jpeg(1200, 900, quality=97)
    with srv.ImageServer() as s:
        s.route("/big.jpg", srv.static(body))
        s.route("/big-chunked.jpg", srv.chunked(body))
        cfg = world_config(max_bytes=len(body) - 1)
        assert fetch_one(cfg, s.url("/big.jpg")).reason == "body_too_large"
        assert fetch_one(cfg, s.url("/big-chunked.jpg")).reason == "body_too_large"
        ok = fetch_one(world_config(max_bytes=len(body)), s.url("/big-chunked.jpg"))
        assert ok.ok and ok.body == body, "exactly at the cap passes, chunked bodies reassemble"


def test_opt_out_is_decided_on_the_headers():
    """The body never comes (the server stalls after the headers): the opt-out must not wait for it."""
    with srv.ImageServer() as s:
        s.route("/noai.jpg", lambda req: srv.Reply(200, jpeg(), {"X-Robots-Tag": "noai"}, declared_length=10**6, then="stall"))
        res = fetch_one(world_config(read_timeout=5, timeout=10, retries=0), s.url("/noai.jpg"))
        assert res.reason == "opt_out"


def test_user_agent_and_opt_out_token_are_configurable():
    with srv.ImageServer() as s:
        s.route("/mine.jpg", srv.static(jpeg(), headers={"X-Robots-Tag": "mybot: noai"}))
        cfg = world_config(user_agent="MyBot/2.0 (+https://example.org/bot)")
        res = fetch_one(cfg, s.url("/mine.jpg"))
        assert res.reason == "opt_out"
        assert s.last_request["/mine.jpg"].headers["user-agent"] == "MyBot/2.0 (+https://example.org/bot)"
        assert fetch_one(world_config(), s.url("/mine.jpg")).ok, "addressed to mybot, not laion-pipe"
        s.route("/plain-noai.jpg", srv.static(jpeg(), headers={"X-Robots-Tag": "noai"}))
        assert fetch_one(world_config(), s.url("/plain-noai.jpg")).reason == "opt_out"
        assert fetch_one(world_config(opt_out_tokens=["noimageai"]), s.url("/plain-noai.jpg")).ok


@pytest.mark.parametrize("directive", ["noai", "noimageai", "noindex", "noimageindex", "NoImageIndex"])
def test_img2dataset_default_directives_refuse_an_image(directive):
    """img2dataset's default disallowed_header_directives: each of the four refuses by default."""
    with srv.ImageServer() as s:
        s.route("/x.jpg", srv.static(jpeg(), headers={"X-Robots-Tag": f"nofollow, {directive}"}))
        s.route("/y.jpg", srv.static(jpeg(), headers={"X-Robots-Tag": "nofollow, noarchive"}))
        res = fetch_one(world_config(), s.url("/x.jpg"))
        assert res.reason == "opt_out" and directive.lower() in res.error
        assert fetch_one(world_config(), s.url("/y.jpg")).ok, "other directives do not opt out"


def test_redirect_limit_and_final_url(world):
    res = fetch_one(world_config(), world.url("/chain1"))
    assert res.ok and res.final_url == world.url("/ok.jpg")
    assert fetch_one(world_config(max_redirects=2), world.url("/chain1")).reason == "too_many_redirects"
    assert fetch_one(world_config(max_redirects=3), world.url("/chain1")).ok


def test_blocked_addresses_are_never_connected_to():
    with srv.ImageServer("127.0.0.1") as allowed, srv.ImageServer("127.0.0.2") as outsider:
        outsider.route("/x.jpg", srv.static(jpeg()))
        allowed.route("/x.jpg", srv.static(jpeg()))
        allowed.route("/hop", srv.redirect(outsider.url("/x.jpg")))
        cfg = world_config()
        assert fetch_one(cfg, outsider.url("/x.jpg")).reason == "blocked_address"  # IP literal: socket factory
        assert fetch_one(cfg, allowed.url("/hop")).reason == "blocked_address"  # at a redirect hop
        mapped = f"http://[::ffff:127.0.0.2]:{outsider.port}/x.jpg"
        assert fetch_one(cfg, mapped).reason == "blocked_address"
        # Without an allow-list, loopback is refused too, by name and by number.
        strict = world_config(allow_cidrs=[])
        assert fetch_one(strict, allowed.url("/x.jpg")).reason == "blocked_address"
        assert fetch_one(strict, f"http://localhost:{allowed.port}/x.jpg").reason == "blocked_address"
        assert fetch_one(cfg, f"http://localhost:{allowed.port}/x.jpg").ok, "localhost -> 127.0.0.1 is allowed"
        assert outsider.connections == 0
        assert allowed.hits["/x.jpg"] == 1


class Rebinding(AbstractResolver):
    """A DNS server that answers the allowed address first, then another one (rebinding)."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = 0

    async def resolve(self, host, port=0, family=socket.AF_INET):
        ip = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return [{"hostname": host, "host": ip, "port": port, "family": socket.AF_INET, "proto": 0, "flags": 0}]

    async def close(self):
        pass


def test_dns_rebinding_cannot_pass():
    with srv.ImageServer("127.0.0.1") as allowed, srv.ImageServer("127.0.0.2") as outsider:
        allowed.route("/x.jpg", srv.static(jpeg()))
        outsider.route("/x.jpg", srv.static(jpeg()))
        cfg = world_config(dns_cache_ttl=0)
        # Same port on both addresses is not needed: the check is on the address alone.
        resolver = Rebinding(["127.0.0.1", "127.0.0.2"])
        first = fetch_one(cfg, f"http://images.test:{allowed.port}/x.jpg", resolver)
        assert first.ok
        second = fetch_one(cfg, f"http://images.test:{outsider.port}/x.jpg", resolver)
        assert second.reason == "blocked_address"
        assert resolver.calls == 2
        assert outsider.connections == 0


def test_bad_urls_are_drop_reasons_not_crashes():
    cfg = world_config()
    for url in ("ftp://example.com/a.jpg", "http://", "not a url", "http://2130706433/a.jpg", "javascript:alert(1)"):
        res = fetch_one(cfg, url)
        assert res.reason in ("bad_url", "blocked_address"), (url, res.reason, res.error)
        assert not res.transient


def test_connection_refused_is_transient():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = fetch_one(world_config(retries=0), f"http://127.0.0.1:{port}/a.jpg")
    assert res.reason == "connection_error"
    assert res.reason in TRANSIENT_REASONS


class FailingResolver(AbstractResolver):
    def __init__(self, errno: int):
        self.errno = errno

    async def resolve(self, host, port=0, family=socket.AF_INET):
        raise socket.gaierror(self.errno, "resolver says no")

    async def close(self):
        pass


def test_dns_failures_final_or_transient():
    cfg = world_config(retries=0)
    gone = fetch_one(cfg, "http://no-such-host.test/a.jpg", FailingResolver(socket.EAI_NONAME))
    assert gone.reason == "dns_error" and not gone.transient
    busy = fetch_one(cfg, "http://busy-resolver.test/a.jpg", FailingResolver(socket.EAI_AGAIN))
    assert busy.reason == "connection_error" and busy.transient


def test_untrusted_certificate_is_a_tls_error(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    with srv.ImageServer(ssl=ctx) as s:
        s.route("/a.jpg", srv.static(jpeg()))
        res = fetch_one(world_config(retries=2), s.url("/a.jpg"))
        assert s.url("/a.jpg").startswith("https://127.0.0.1:")
        assert (res.reason, res.attempts) == ("tls_error", 1)


def test_dns_answers_are_cached():
    with srv.ImageServer() as s:
        s.route("/x.jpg", srv.static(jpeg()))
        resolver = Rebinding(["127.0.0.1"])
        urls = [f"http://images.test:{s.port}/x.jpg?{i}" for i in range(12)]
        results = fetch_all(world_config(per_host=4, dns_cache_ttl=300), urls, resolver)
        assert all(r.ok for r in results)
        assert s.connections >= 2, "several connections were opened..."
        assert resolver.calls == 1, "...from one DNS answer"

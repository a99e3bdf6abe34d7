"""Download stage vs img2dataset on the same loopback image server, same settings.

    python benchmarks/bench_download.py                 # 10,000 URLs, 2 processes
    python benchmarks/bench_download.py --repeat 3 --record   # best of 3; CPU cost to laion_pipe/unit_costs.json
    python benchmarks/bench_download.py --clients       # HTTP clients only: aiohttp vs httpx, urllib3, urllib

One image server (nginx when installed, else laion_pipe.demo.imageserver in a thread) serves
`--urls` distinct URLs over `--images` distinct JPEGs of realistic sizes (300x300 to
1600x1200). Then, in the same run, it times the whole command of each side:

- baseline: `img2dataset` (CLI, webdataset output, parquet input with url+caption);
- ours: `laion-pipe download` on a run directory whose unique/en/part-NNNNN.parquet hold the
  same URLs cut into the same shards;

with the same target (256, keep_ratio, jpg quality 95), sha256, number of processes, requests
in flight per process and samples per shard. img2dataset's EXIF extraction is turned off (we
do not extract EXIF, so it would be work only one side does). It prints images/s (successful
images over the whole command's wall time, start-up included) and the peak memory of each
command's process tree (sum of PSS, so shared pages are not counted twice), and as its last
line `ratio: <ours images/s / img2dataset images/s>` (with `--repeat N`, of each side's best
run: on a shared machine, other work slows whichever side it overlaps).

Draft mode: our default decodes JPEGs at a reduced DCT scale (1/8 to 5/8) when the target is
that much smaller and resizes bilinearly when under 1.5x is left (equivalent output:
tests/test_draft_psnr.py, mean PSNR over 40 dB against full decodes), while img2dataset always
decodes at full size and resizes with INTER_AREA. So the same run also times our command with
`download.draft=false` (full decodes, img2dataset's exact pixels) and prints that ratio on the
line before the last (`--no-full-decode` skips it). Each run also prints the CPU seconds of the
command's process tree and the load average around it: on a shared machine, images/s moves with
the other work, CPU per image much less.
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

SIZES = [(300, 300), (400, 300), (500, 375), (640, 480), (600, 800), (800, 600), (1024, 768), (1280, 960), (1200, 1600), (1600, 1200)]


# ---------------------------------------------------------------- data


def make_jpeg(width: int, height: int, seed: int) -> bytes:
    """A photo-like JPEG: smooth colour field, shapes with edges, sensor-like noise."""
    rng = np.random.default_rng(seed)
    small = (rng.random((max(2, height // 48), max(2, width // 48), 3)) * 255).astype(np.uint8)
    im = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(10, width // 2)), y0 + int(rng.integers(10, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    arr = np.asarray(im).astype(np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=int(rng.integers(75, 93)))
    return buf.getvalue()


def image_set(n: int, cache: Path) -> tuple[dict[str, bytes], Path]:
    """n distinct JPEGs, cached on disk (generating them takes a while on a small machine)."""
    folder = cache / f"images-{n}-v1"
    if not folder.is_dir() or len(list(folder.glob("*.jpg"))) != n:
        tmp = Path(tempfile.mkdtemp(dir=cache))
        tmp.chmod(0o755)  # nginx workers run as an unprivileged user
        for i in range(n):
            w, h = SIZES[i % len(SIZES)]
            (tmp / f"{i}.jpg").write_bytes(make_jpeg(w, h, i))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    folder.chmod(0o755)
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.jpg"))}, folder


def record_dedup(run_dir: Path) -> None:
    """Record the hand-written unique/ parts as the dedup stage's done partitions: download reads
    its upstream's current plan, never a folder listing."""
    from laion_pipe import fsio, runner

    out = str(run_dir)
    parts = []
    for path in sorted((run_dir / "unique" / "en").glob("part-*.parquet")):
        rel = f"unique/en/{path.name}"
        parts.append(runner.Partition(f"en-{path.stem}", (), runner.fingerprint(rel, fsio.fingerprint_of(str(path)))))
        runner.write_manifest(out, "dedup", parts[-1].key, fingerprint=parts[-1].fingerprint, inputs=[],
                              outcome=runner.Outcome(outputs=[rel]))
    runner.write_plan(out, "dedup", parts)


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """nginx serving `root` on 127.0.0.1 (or on each of `hosts`, one port):
    /img/<anything>/<name> -> root/<name>."""

    def __init__(self, root: Path, work: Path, hosts: tuple[str, ...] = ("127.0.0.1",)):
        self.root, self.work, self.port, self.hosts = root, work, free_port(), hosts
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Nginx:
        self.work.mkdir(parents=True, exist_ok=True)
        w = self.work
        conf = f"""
worker_processes 1;
daemon off;
pid {w}/nginx.pid;
error_log {w}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on; tcp_nodelay on;
    keepalive_requests 1000000; keepalive_timeout 60;
    client_body_temp_path {w}/body; proxy_temp_path {w}/proxy; fastcgi_temp_path {w}/fcgi;
    uwsgi_temp_path {w}/uwsgi; scgi_temp_path {w}/scgi;
    types {{ image/jpeg jpg; }}
    server {{
        {" ".join(f"listen {h}:{self.port} backlog=4096;" for h in self.hosts)}
        root {self.root};
        location /img/ {{ rewrite ^/img/.*/([^/]+)$ /$1 break; }}
    }}
}}
"""
        (w / "nginx.conf").write_text(conf)
        self.proc = subprocess.Popen(["nginx", "-p", str(w), "-c", str(w / "nginx.conf")], stderr=subprocess.PIPE)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection((self.hosts[0], self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"nginx exited: {self.proc.stderr.read().decode()}")
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.hosts[0]}:{self.port}{path}"


class PyServer:
    def __init__(self, blobs: dict[str, bytes], host: str = "127.0.0.1"):
        from laion_pipe.demo.imageserver import ImageServer

        self.srv = ImageServer(host=host)
        self.srv.add_blobs("/img", blobs)

    def __enter__(self) -> PyServer:
        self.srv.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.srv.stop()

    def url(self, path: str) -> str:
        return self.srv.url(path)


def open_server(kind: str, blobs: dict[str, bytes], root: Path, work: Path):
    if kind == "nginx" or (kind == "auto" and shutil.which("nginx")):
        return "nginx", Nginx(root, work / "nginx")
    return "python (laion_pipe.demo.imageserver)", PyServer(blobs)


# ---------------------------------------------------------------- measuring a command


def run_measured(cmd: list[str], env: dict[str, str], log: Path, per_process: dict[int, int] | None = None) -> tuple[float, int, int, float]:
    """(wall seconds, peak PSS bytes of the whole process tree, exit code, CPU seconds).

    CPU seconds (user + sys of the command and the descendants it waited for) show the work
    done independently of what else the machine runs; images/s is what the issue asks for.
    `per_process`, if given, receives each process's own peak PSS by pid (a worker's budget)."""
    import resource

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        root = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            total = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                procs = []
            for p in procs:
                try:
                    mi = p.memory_full_info()
                    total += getattr(mi, "pss", mi.rss)
                    if per_process is not None:
                        per_process[p.pid] = max(per_process.get(p.pid, 0), getattr(mi, "pss", mi.rss))
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    pass
            peak = max(peak, total)
            time.sleep(0.25)  # reading PSS costs ~3 ms a process: sample sparingly
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return wall, peak, proc.returncode, cpu


def successes(stats_glob: str) -> tuple[int, int]:
    ok = count = 0
    for path in glob.glob(stats_glob):
        s = json.loads(Path(path).read_text())
        ok += s["successes"]
        count += s["count"]
    return ok, count


# ---------------------------------------------------------------- HTTP clients (--clients)


def bench_clients(urls: list[str], in_flight: int) -> None:
    """Fetch the same URLs with each client; bodies are read fully and discarded."""
    import concurrent.futures as cf
    import urllib.request

    import httpx
    import urllib3

    from laion_pipe.config.download import DownloadConfig
    from laion_pipe.net.fetch import Fetcher

    def timed(name: str, fn) -> float:
        t0 = time.perf_counter()
        n = fn()
        rate = n / (time.perf_counter() - t0)
        print(f"{name:40s} {rate:8.0f} requests/s")
        return rate

    def ours() -> int:
        cfg = DownloadConfig(allow_cidrs=["127.0.0.1/32"], threads=in_flight)

        async def main() -> int:
            async with Fetcher(cfg) as f:
                it = iter(urls)
                n = 0

                async def w() -> None:
                    nonlocal n
                    for u in it:
                        r = await f.fetch(u)
                        n += r.ok

                await asyncio.gather(*(w() for _ in range(in_flight)))
                return n

        return asyncio.run(main())

    def httpx_async() -> int:
        async def main() -> int:
            limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
            async with httpx.AsyncClient(limits=limits, timeout=10) as c:
                it = iter(urls)
                n = 0

                async def w() -> None:
                    nonlocal n
                    for u in it:
                        r = await c.get(u)
                        n += r.status_code == 200 and len(r.content) > 0

                await asyncio.gather(*(w() for _ in range(in_flight)))
                return n

        return asyncio.run(main())

    def urllib3_threads() -> int:
        pool = urllib3.PoolManager(maxsize=in_flight)
        with cf.ThreadPoolExecutor(in_flight) as ex:
            return sum(ex.map(lambda u: len(pool.request("GET", u).data) > 0, urls))

    def urllib_threads() -> int:
        def get(u: str) -> bool:
            with urllib.request.urlopen(u, timeout=10) as r:
                return len(r.read()) > 0

        with cf.ThreadPoolExecutor(in_flight) as ex:
            return sum(ex.map(get, urls))

    base = timed("urllib.request, threads (img2dataset's)", urllib_threads)
    timed("urllib3 PoolManager, threads", urllib3_threads)
    timed("httpx AsyncClient", httpx_async)
    mine = timed("aiohttp + guard (laion_pipe.net.fetch)", ours)
    print(f"ratio: {mine / base:.2f}")


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--urls", type=int, default=10_000, help="distinct URLs to download")
    ap.add_argument("--images", type=int, default=300, help="distinct images behind them")
    ap.add_argument("--processes", type=int, default=2, help="processes on each side")
    ap.add_argument("--threads", type=int, default=64, help="requests in flight per process on each side")
    ap.add_argument("--shard-size", type=int, default=None, help="samples per shard (default: urls / (2 x processes))")
    ap.add_argument("--server", choices=["auto", "nginx", "python"], default="auto")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "laion_pipe_bench"), help="where generated images are kept")
    ap.add_argument("--clients", action="store_true", help="compare HTTP clients only (no decoding)")
    ap.add_argument("--keep", action="store_true", help="keep the output folders")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra workflow override for our side, e.g. download.decode_threads=1 (repeatable)")
    ap.add_argument("--only", choices=["img2dataset", "ours"], help="run one side only (no ratio)")
    ap.add_argument("--repeat", type=int, default=1, help="run both sides this many times, alternating; the ratio uses each side's best run")
    ap.add_argument("--no-full-decode", action="store_true", help="do not also time our command with download.draft=false")
    ap.add_argument("--record", action="store_true",
                    help="write our command's CPU core-seconds per 1000 images (download + resize, whole command) to "
                         "laion_pipe/unit_costs.json as download.core_seconds_per_thousand_images")
    args = ap.parse_args()

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    blobs, folder = image_set(args.images, cache)
    sizes = [len(b) for b in blobs.values()]
    work = Path(tempfile.mkdtemp(prefix="bench_download_"))
    names = sorted(blobs)
    server_name, server = open_server(args.server, blobs, folder, work)
    print(f"server: {server_name}; {args.urls} URLs over {len(blobs)} JPEGs, {min(sizes) // 1000}-{max(sizes) // 1000} kB (mean {np.mean(sizes) / 1000:.0f} kB)")
    try:
        with server:
            urls = [server.url(f"/img/{i}/{names[i % len(names)]}") for i in range(args.urls)]
            if args.clients:
                bench_clients(urls, args.threads)
                return 0
            shard = args.shard_size or math.ceil(args.urls / (2 * args.processes))
            n = len(urls)
            texts = [f"a photo number {i}" for i in range(n)]

            # baseline input: one parquet, img2dataset cuts it into shards of `shard` samples
            i2d_in = work / "i2d_input.parquet"
            pq.write_table(pa.table({"url": urls, "caption": texts}), i2d_in)
            # ours: the dedup stage's output layout, same shards
            run_dir = work / "ours"
            from laion_pipe.schema import CANDIDATE_SCHEMA

            for k, start in enumerate(range(0, n, shard)):
                part = run_dir / "unique" / "en" / f"part-{k:05d}.parquet"
                part.parent.mkdir(parents=True, exist_ok=True)
                m = len(urls[start : start + shard])
                pq.write_table(
                    pa.table(
                        {
                            "uid": [f"u{i}" for i in range(start, start + m)],
                            "url": urls[start : start + shard],
                            "text": texts[start : start + shard],
                            "page_url": [None] * m,
                            "language": ["en"] * m,
                            "language_score": pa.array([1.0] * m, pa.float32()),
                            "subset": ["en"] * m,
                            "license": [None] * m,
                            "source": [None] * m,
                        },
                        schema=CANDIDATE_SCHEMA,
                    ),
                    part,
                )
            record_dedup(run_dir)

            env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled", PYTHONWARNINGS="ignore")
            i2d_out = work / "i2d_out"
            i2d_cmd = [
                "img2dataset", f"--url_list={i2d_in}", "--input_format=parquet", "--url_col=url", "--caption_col=caption",
                "--output_format=webdataset", f"--output_folder={i2d_out}", f"--processes_count={args.processes}",
                f"--thread_count={args.threads}", "--image_size=256", "--resize_mode=keep_ratio", "--encode_quality=95",
                "--encode_format=jpg", f"--number_sample_per_shard={shard}", "--extract_exif=False",
                "--compute_hash=sha256", "--enable_wandb=False", "--timeout=10", "--retries=0",
            ]
            laion = shutil.which("laion-pipe") or "laion-pipe"
            our_cmd = [
                laion, "download", "--out", str(run_dir), "--no-progress",
                "--set", "download.allow_cidrs=[127.0.0.1/32]",
                "--set", f"download.threads={args.threads}",
                "--set", "download.image_size=256", "--set", "download.resize_mode=keep_ratio",
                "--set", "download.encode_quality=95", "--set", "download.timeout=10",
                "--set", f"cluster.n_workers={args.processes}", "--set", "cluster.threads_per_worker=1",
                "--set", "cluster.processes=true", "--set", "runner.progress=false",
                *[x for o in args.overrides for x in ("--set", o)],
            ]
            ours = "laion-pipe download"
            full = "  ... draft=false"
            ours_out = (str(run_dir / "images" / "en" / "*_stats.json"), run_dir / "images")
            sides = [
                ("img2dataset", i2d_cmd, str(i2d_out / "*_stats.json"), i2d_out),
                (ours, our_cmd, *ours_out),
            ]
            if not args.no_full_decode:
                sides.append((full, [*our_cmd, "--set", "download.draft=false"], *ours_out))
            if args.only:
                sides = [s for s in sides if s[0].startswith("img2dataset" if args.only == "img2dataset" else "laion")]
            best: dict[str, float] = {}
            peaks: dict[str, int] = {}
            cpu_per_image: dict[str, float] = {}
            for attempt in range(args.repeat):  # sides alternate, so load changes hit both alike
                for side, (name, cmd, stats_glob, out_dir) in enumerate(sides):
                    shutil.rmtree(out_dir, ignore_errors=True)
                    shutil.rmtree(run_dir / "_state", ignore_errors=True)
                    record_dedup(run_dir)
                    log = work / f"side{side}.log"
                    load_before = os.getloadavg()[0]
                    wall, peak, rc, cpu = run_measured(cmd, env, log)
                    ok, count = successes(stats_glob)
                    if rc != 0 or ok == 0:
                        print(log.read_text()[-3000:], file=sys.stderr)
                        raise SystemExit(f"{name} failed (exit {rc}, {ok} images)")
                    best[name] = max(best.get(name, 0.0), ok / wall)
                    peaks[name] = max(peaks.get(name, 0), peak)
                    cpu_per_image[name] = min(cpu_per_image.get(name, math.inf), cpu / ok)
                    print(
                        f"{name:22s} {ok:6d}/{count} images in {wall:6.1f} s = {ok / wall:7.1f} images/s, "
                        f"peak memory {peak / 2**20:7.0f} MiB, CPU {cpu:6.1f} s ({cpu / max(ok, 1) * 1000:.1f} ms/image), "
                        f"load {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
                        + (f"  [run {attempt + 1}/{args.repeat}]" if args.repeat > 1 else "")
                    )
            print(f"load average over the {os.cpu_count()} cores at the end: " + " ".join(f"{x:.1f}" for x in os.getloadavg()))
            for name in best:
                print(
                    f"{name:22s} best {best[name]:7.1f} images/s, peak memory {peaks[name] / 2**20:7.0f} MiB, "
                    f"least CPU {cpu_per_image[name] * 1000:.2f} ms/image"
                )
            if args.record and ours in cpu_per_image:
                from laion_pipe.costs import measured_source, record_unit_cost

                record_unit_cost(
                    "download.core_seconds_per_thousand_images", cpu_per_image[ours] * 1000, "core-s per 1000 images",
                    measured_source(
                        f"benchmarks/bench_download.py --urls {args.urls} --images {args.images} --processes {args.processes} "
                        f"--threads {args.threads} --repeat {args.repeat} --record",
                        f"CPU seconds (user + sys) of the whole `laion-pipe download` process tree (Dask start-up, download, "
                        f"decode with draft, resize to 256 keep_ratio, JPEG q95, tar/parquet writing) per 1000 successful images "
                        f"from a loopback {server_name} server (plain HTTP: no TLS, no DNS, no slow hosts, which real downloads "
                        f"add), least of {args.repeat} run(s); img2dataset in the same run: "
                        f"{cpu_per_image.get('img2dataset', math.nan) * 1000:.1f} core-s per 1000 images",
                    ),
                )
                print(f"recorded download.core_seconds_per_thousand_images = {cpu_per_image[ours] * 1000:.2f} in laion_pipe/unit_costs.json")
            if "img2dataset" in best and ours in best:
                print(f"CPU per image, img2dataset / ours: {cpu_per_image['img2dataset'] / cpu_per_image[ours]:.2f}")
                print(f"peak memory, ours / img2dataset: {peaks[ours] / peaks['img2dataset']:.2f}")
                if full in best:
                    print(f"ratio with download.draft=false (full decodes, like img2dataset): {best[full] / best['img2dataset']:.2f}")
                print(f"ratio: {best[ours] / best['img2dataset']:.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"outputs kept in {work}")
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up when piped to a file
    raise SystemExit(main())

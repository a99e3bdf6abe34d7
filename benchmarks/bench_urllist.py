"""A whole run from a URL list, against img2dataset on the same list; and `laion-pipe extract` of a
10M-row list.

    python benchmarks/bench_urllist.py                          # both parts
    python benchmarks/bench_urllist.py --skip-big               # the 50,000-row run only
    python benchmarks/bench_urllist.py --skip-run --big-rows 10000000

Part 1, the whole run: a LAION-schema parquet list of `--rows` rows (URL, TEXT, WIDTH, HEIGHT,
similarity, hash, punsafe, pwatermark, LICENSE: LAION-2B-en's columns) whose URLs point at one
loopback image server (bench_download's images: `--images` distinct JPEGs of 300x300 to
1600x1200; nginx when installed, as on the web the server's work is not the client's; else Python
server threads). There is no DNS here, so each of the list's ten hosts is its own loopback
address (127.0.0.2 to 127.0.0.11, the host's name kept as the first path segment): a client sees
ten hosts, as it would on the real list, and per-host connection limits apply per host (ours
allows `download.per_host` = 16 connections to each; img2dataset has no such limit). In the same
run it times, as whole commands:
- baseline: `img2dataset` on the list (parquet input, URL/TEXT, the other columns saved,
  webdataset output, 256 px keep_ratio, jpg q95, sha256, same processes, threads and shard size);
- ours: `laion-pipe run --stages extract,dedup,download` on the same list (the list's columns
  carried, language from the list, the same download settings).
It prints images/s of each over the whole command and `download ratio` (ours / img2dataset, which
bench_download.py holds at >= 2.5), and the share of our run spent reading the list: the extract
stage's wall time (first partition started to last finished, from its manifests) over the
command's wall time, and its task-seconds over the command's CPU seconds.

Part 2, `laion-pipe extract` of a generated `--big-rows` LAION-schema parquet (row groups of
500,000 rows, partitions of 1M rows, 2 workers): rows/s over the whole command and over the
extract stage, and the peak memory (PSS) of each worker process, which must stay under 1 GB.

The last line is `ratio: <download ratio>`. On a shared machine, other work slows whichever side
it overlaps: the load average is printed with every timing.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from laion_pipe import runner  # noqa: E402
from bench_download import Nginx, PyServer, image_set, run_measured, successes  # noqa: E402 - the sibling benchmark

HOSTS = ["i.pinimg.com", "cdn.shopify.com", "images-na.ssl-images-amazon.com", "upload.wikimedia.org", "i.ebayimg.com",
         "ae01.alicdn.com", "img.etsystatic.com", "media.gettyimages.com", "farm4.staticflickr.com", "i.ytimg.com"]
WORDS = ("red blue green vintage modern wooden leather summer winter dress shoes table chair lamp garden house "
         "mountain lake city street portrait wedding cake flower dog cat car bike kitchen living room poster art "
         "print canvas photo stock image background pattern texture gold silver black white").split()


def laion_table(n: int, url_of, seed: int = 0) -> pa.Table:
    """n rows in LAION-2B-en's columns, vectorised (10M rows in seconds). `url_of(i, host)` builds
    URLs for the first part; for the big list URLs are built here."""
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    if url_of is not None:
        urls = pa.array([url_of(i, HOSTS[i % len(HOSTS)]) for i in range(n)])
    else:
        host = pa.array(HOSTS).take(pa.array(idx % len(HOSTS)))
        ids = pc.cast(pa.array(idx), pa.string())
        urls = pc.binary_join_element_wise("https://", host, "/originals/", ids, "/photo.jpg", "")
    vocab = pa.array(WORDS)
    caps = [vocab.take(pa.array(rng.integers(0, len(WORDS), n))) for _ in range(6)]
    text = pc.binary_join_element_wise(*caps, " ")
    return pa.table({
        "URL": urls, "TEXT": text,
        "WIDTH": pa.array(rng.integers(200, 2000, n), pa.int32()), "HEIGHT": pa.array(rng.integers(200, 2000, n), pa.int32()),
        "similarity": rng.uniform(0.28, 0.45, n), "hash": pa.array(rng.integers(-2**62, 2**62, n), pa.int64()),
        "punsafe": rng.uniform(0, 1, n).astype(np.float32), "pwatermark": rng.uniform(0, 1, n).astype(np.float32),
        "LICENSE": pa.array(np.where(idx % 7 == 0, "?", None).tolist(), pa.string()),
    })


def stage_times(run: Path, stage: str) -> tuple[float, float]:
    """(wall seconds from the first partition's start to the last one's end, summed task seconds),
    over the stage's current partitions (its plan, as a downstream stage reads it)."""
    ms = [d.manifest for d in runner.current(str(run), stage)]
    if not ms:
        return math.nan, math.nan
    return max(m["finished"] for m in ms) - min(m["started"] for m in ms), sum(m["seconds"] for m in ms)


class HostServers:
    """The list's hosts as distinct loopback addresses (127.0.0.2, ...), as hosts on the web are to
    a client: one nginx listening on all of them when nginx is installed (it serves from the
    image folder with sendfile, so the server takes little of the CPU both sides share), else one
    Python image server thread per address."""

    def __init__(self, blobs: dict[str, bytes], folder: Path, work: Path, kind: str = "auto"):
        self.address = {h: f"127.0.0.{2 + i}" for i, h in enumerate(HOSTS)}
        if kind == "nginx" or (kind == "auto" and shutil.which("nginx")):
            self.name = f"nginx on {len(HOSTS)} addresses 127.0.0.2-{1 + len(HOSTS)}"
            self.nginx: Nginx | None = Nginx(folder, work / "nginx", tuple(self.address.values()))
            self.servers: dict[str, PyServer] = {}
        else:
            self.name = f"python (laion_pipe.demo.imageserver), one thread per address 127.0.0.2-{1 + len(HOSTS)}"
            self.nginx = None
            self.servers = {h: PyServer(blobs, host=a) for h, a in self.address.items()}

    def __enter__(self) -> HostServers:
        # an ExitStack: a server that fails to start still stops those started before it
        with contextlib.ExitStack() as stack:
            for s in [self.nginx, *self.servers.values()]:
                if s is not None:
                    stack.enter_context(s)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.__exit__(*exc)

    def url(self, host: str, path: str) -> str:
        if self.nginx is not None:
            return self.nginx.url(f"/img/{host}{path}", host=self.address[host])
        return self.servers[host].url(f"/img/{host}{path}")


def laion_pipe() -> str:
    return shutil.which("laion-pipe") or "laion-pipe"


def whole_run(args, work: Path, env: dict) -> float | None:
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    blobs, folder = image_set(args.images, cache)
    names = sorted(blobs)
    shard = args.shard_size or math.ceil(args.rows / (2 * args.processes))
    with HostServers(blobs, folder, work, args.server) as server:
        server_name = server.name
        table = laion_table(args.rows, lambda i, host: server.url(host, f"/originals/{i:07d}/{names[i % len(names)]}"))
        lst = work / "laion-list.parquet"
        pq.write_table(table, lst, row_group_size=10_000)
        print(f"server: {server_name}; list: {args.rows:,} rows in LAION-2B-en's columns over {len(names)} JPEGs, "
              f"{shard} samples per shard, {args.processes} processes x {args.threads} requests in flight")
        extras = ["WIDTH", "HEIGHT", "similarity", "hash", "punsafe", "pwatermark", "LICENSE"]
        i2d_out = work / "i2d_out"
        i2d = ["img2dataset", f"--url_list={lst}", "--input_format=parquet", "--url_col=URL", "--caption_col=TEXT",
               f"--save_additional_columns={json.dumps(extras)}", "--output_format=webdataset", f"--output_folder={i2d_out}",
               f"--processes_count={args.processes}", f"--thread_count={args.threads}", "--image_size=256",
               "--resize_mode=keep_ratio", "--encode_quality=95", "--encode_format=jpg", f"--number_sample_per_shard={shard}",
               "--extract_exif=False", "--compute_hash=sha256", "--enable_wandb=False", "--timeout=10", "--retries=0"]
        run = work / "ours"
        wf = work / "wf.yaml"
        wf.write_text("name: bench-urllist\n")
        ours = [laion_pipe(), "run", str(wf), "--stages", "extract,dedup,download", "--out", str(run), "--no-progress",
                "--set", f"inputs=[{lst}]", "--set", "extract.lists.language=en",
                "--set", f"dedup.rows_per_part={shard}", "--set", "download.allow_cidrs=[127.0.0.0/8]",
                "--set", f"download.threads={args.threads}", "--set", "download.image_size=256",
                "--set", "download.resize_mode=keep_ratio", "--set", "download.encode_quality=95",
                "--set", "download.timeout=10", "--set", f"cluster.n_workers={args.processes}",
                "--set", "cluster.threads_per_worker=1", "--set", "cluster.processes=true",
                *[x for o in args.overrides for x in ("--set", o)]]
        rates, cpu, walls = {}, {}, {}
        sides = (("img2dataset", i2d, str(i2d_out / "*_stats.json"), i2d_out),
                 ("laion-pipe run", ours, str(run / "images" / "*" / "*_stats.json"), run))
        for name, cmd, stats_glob, out_dir in sides:
            if args.only and not name.startswith(args.only):
                continue
            shutil.rmtree(out_dir, ignore_errors=True)
            load = os.getloadavg()[0]
            wall, peak, rc, cpu[name] = run_measured(cmd, env, work / f"{name.split()[0]}.log")
            walls[name] = wall
            ok, count = successes(stats_glob)
            if rc != 0 or ok == 0:
                print((work / f"{name.split()[0]}.log").read_text()[-3000:], file=sys.stderr)
                raise SystemExit(f"{name} failed (exit {rc}, {ok} images)")
            rates[name] = ok / wall
            print(f"{name:16s} {ok:6d}/{count} images in {wall:6.1f} s = {ok / wall:7.1f} images/s, peak memory "
                  f"{peak / 2**20:6.0f} MiB, CPU {cpu[name]:6.1f} s, load {load:.1f} -> {os.getloadavg()[0]:.1f}")
        if args.only:
            return None
        wall_x, task_x = stage_times(run, "extract")
        ours_wall = walls["laion-pipe run"]
        print(f"reading the list (extract stage): {wall_x:.2f} s of {ours_wall:.1f} s wall = {100 * wall_x / ours_wall:.2f}% of the run; "
              f"{task_x:.2f} task-s of {cpu['laion-pipe run']:.1f} CPU-s = {100 * task_x / cpu['laion-pipe run']:.2f}% (must be < 2%)")
        ratio = rates["laion-pipe run"] / rates["img2dataset"]
        print(f"download ratio (whole run from the list / img2dataset, images/s): {ratio:.2f} (must stay >= 2.5)")
        return ratio


def big_extract(args, work: Path, env: dict) -> None:
    lst = work / "big-laion.parquet"
    t0 = time.time()
    writer = None
    step = 1_000_000
    for start in range(0, args.big_rows, step):
        t = laion_table(min(step, args.big_rows - start), None, seed=start)
        t = t.set_column(0, "URL", pc.binary_join_element_wise(t["URL"], pa.array([f"?n={start}"] * len(t)), ""))
        writer = writer or pq.ParquetWriter(lst, t.schema, compression="snappy")
        writer.write_table(t, row_group_size=500_000)
    writer.close()
    print(f"generated {args.big_rows:,} rows ({lst.stat().st_size / 2**20:.0f} MiB parquet, row groups of 500,000) "
          f"in {time.time() - t0:.0f} s")
    run = work / "big-run"
    cmd = [laion_pipe(), "extract", str(lst), "--out", str(run), "--no-progress", "--set", "extract.lists.language=en",
           "--set", "cluster.n_workers=2", "--set", "cluster.threads_per_worker=1", "--set", "cluster.processes=true"]
    per_process: dict[int, int] = {}
    load = os.getloadavg()[0]
    wall, peak, rc, cpu = run_measured(cmd, env, work / "big.log", per_process)
    if rc != 0:
        print((work / "big.log").read_text()[-3000:], file=sys.stderr)
        raise SystemExit(f"laion-pipe extract failed (exit {rc})")
    stage_wall, task_s = stage_times(run, "extract")
    kept = sum(pq.ParquetFile(p).metadata.num_rows for p in runner.current_outputs(str(run), "extract"))
    peaks = sorted(per_process.values(), reverse=True)
    print(f"laion-pipe extract: {args.big_rows:,} rows ({kept:,} pairs kept) in {wall:.1f} s = {args.big_rows / wall:,.0f} rows/s "
          f"over the whole command; the extract stage {stage_wall:.1f} s = {args.big_rows / stage_wall:,.0f} rows/s "
          f"({args.big_rows / task_s:,.0f} rows/s per worker process); CPU {cpu:.0f} s; load {load:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"peak memory: the command's tree {peak / 2**20:.0f} MiB; its largest processes "
          f"{', '.join(f'{p / 2**20:.0f}' for p in peaks[:4])} MiB (a worker must stay under 1024 MiB: "
          f"{'yes' if peaks and peaks[0] < 2**30 else 'NO'})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000, help="rows of the list the whole run starts from")
    ap.add_argument("--images", type=int, default=300, help="distinct images behind them")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--server", choices=["auto", "nginx", "python"], default="auto",
                    help="image server: nginx when installed (auto), or Python server threads")
    ap.add_argument("--threads", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=None, help="samples per shard (default: rows / (2 x processes))")
    ap.add_argument("--big-rows", type=int, default=10_000_000, help="rows of the list `laion-pipe extract` reads in part 2")
    ap.add_argument("--skip-run", action="store_true", help="skip part 1")
    ap.add_argument("--skip-big", action="store_true", help="skip part 2")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "laion_pipe_bench"))
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra workflow settings for our run (e.g. download.decode_threads=1)")
    ap.add_argument("--only", choices=["img2dataset", "laion-pipe"], help="time one side only (no ratio)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_urllist_"))
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled", PYTHONWARNINGS="ignore")
    ratio = None
    try:
        if not args.skip_big:
            big_extract(args, work, env)
        if not args.skip_run:
            ratio = whole_run(args, work, env)
    finally:
        if args.keep:
            print(f"outputs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"load average over the {os.cpu_count()} cores at the end: " + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    if ratio is not None:
        print(f"ratio: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    raise SystemExit(main())

"""Benchmark the YTS-compatible API (issue 6) on a 70,000-movie mirror over loopback.

    .venv/bin/python bench/bench_api.py                 # build (or reuse) the mirror, serve it, measure
    .venv/bin/python bench/bench_api.py --movies 70000 --db /tmp/bench-api.db --seconds 10

The mirror is synthesized from the simulator's catalog (mirror.fakeapi.Catalog) and written with
the project's own store.upsert_movies and enrich.write_movie (bench/synthetic.py), the rows a sync
with movie_details enrichment writes; that takes under two minutes on a 2-CPU box where
a real 70k-movie sync over loopback takes six. The file is reused by later runs (--rebuild to
redo it). It is then served by `yts-mirror serve` (or `datasette` with --server datasette) in a
subprocess, and measured with keep-alive HTTP/1.1 clients on asyncio:

- latency: one client, `list_movies.json?limit=50` again and again (p50 / p95 / p99);
- throughput: 8 concurrent clients for --seconds (req/s and p50);
- cold pages: one client asking random pages of several sorts, none answered from the response
  cache (the first page of a sort also computes, then caches, the whole ordering).
Targets (issue 6): p50 under 30 ms, at least 300 req/s with 8 clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mirror import store
from synthetic import build_mirror  # noqa: E402 - bench/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
PATH = "/api/v2/list_movies.json?limit=50"


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(kind: str, db: Path, port: int) -> list[str]:
    """The command that serves the mirror."""
    bin_dir = Path(sys.executable).parent
    if kind == "datasette":
        return [str(bin_dir / "datasette"), str(db), "--port", str(port)]
    return [str(bin_dir / "yts-mirror"), "serve", "--db", str(db), "--port", str(port)]


async def wait_ready(port: int, timeout: float = 60.0) -> None:
    """Wait until the API answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client = await Client.open(port)
            status, _ = await client.get(PATH)
            await client.close()
            if status == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the server on port {port} did not answer within {timeout:.0f} s")


@dataclass
class Client:
    """One keep-alive HTTP/1.1 connection."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    latencies: list[float] = field(default_factory=list)

    @classmethod
    async def open(cls, port: int) -> "Client":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def get(self, path: str) -> tuple[int, bytes]:
        """GET `path`; return the status and body, recording the latency."""
        started = time.perf_counter()
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.lower().split(":", 1) for line in lines[1:] if ":" in line)
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        else:
            body = await self.read_chunked()
        self.latencies.append(time.perf_counter() - started)
        return status, body

    async def read_chunked(self) -> bytes:
        """Read a chunked body."""
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await self.reader.readexactly(size + 2))
            if size == 0:
                return b"".join(part[:-2] for part in parts)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def check(status: int, body: bytes) -> None:
    """Fail loudly on a wrong answer: a fast error is not a result."""
    if status != 200 or not body.startswith(b'{"status":"ok"'):
        raise RuntimeError(f"bad answer {status}: {body[:200]!r}")


async def latency(port: int, count: int) -> list[float]:
    """One client repeating the hot request."""
    client = await Client.open(port)
    for _ in range(count):
        check(*await client.get(PATH))
    await client.close()
    return client.latencies


async def throughput(port: int, clients: int, seconds: float) -> tuple[float, list[float]]:
    """`clients` concurrent clients repeating the hot request; return req/s and latencies."""
    pool = [await Client.open(port) for _ in range(clients)]
    deadline = time.perf_counter() + seconds

    async def run(client: Client) -> None:
        while time.perf_counter() < deadline:
            check(*await client.get(PATH))

    started = time.perf_counter()
    await asyncio.gather(*(run(client) for client in pool))
    elapsed = time.perf_counter() - started
    for client in pool:
        await client.close()
    latencies = [value for client in pool for value in client.latencies]
    return len(latencies) / elapsed, latencies


async def cold_pages(port: int, movies: int, count: int, seed: int) -> dict[str, list[float]]:
    """Random pages per sort, each a different query, so none is answered from the response cache."""
    rng = random.Random(seed)
    pages = max(1, movies // 50)
    results = {}
    for sort in ("date_added", "title", "rating", "seeds"):
        client = await Client.open(port)
        for page in rng.sample(range(1, pages + 1), min(count, pages)):
            check(*await client.get(f"/api/v2/list_movies.json?limit=50&sort_by={sort}&page={page}"))
        await client.close()
        results[sort] = client.latencies
    return results


def ms(values: list[float], quantile: float) -> str:
    """A latency quantile in milliseconds."""
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(len(ordered) * quantile))] * 1000:.1f} ms"


async def measure(args: argparse.Namespace, port: int) -> dict[str, object]:
    """Run every measurement against the served mirror."""
    await wait_ready(port)
    await latency(port, 50)  # warm the page cache and the response cache
    single = await latency(port, args.requests)
    rate, loaded = await throughput(port, args.clients, args.seconds)
    cold = await cold_pages(port, args.movies, args.cold, args.seed)
    return {"single": single, "rate": rate, "loaded": loaded, "cold": cold}


def report(args: argparse.Namespace, build_seconds: float | None, figures: dict[str, object]) -> None:
    """Print the figures."""
    single, loaded, cold = figures["single"], figures["loaded"], figures["cold"]
    print(f"mirror: {args.movies} movies in {args.db} ({os.path.getsize(args.db) / 2**20:.0f} MiB)"
          + (f", built in {build_seconds:.1f} s" if build_seconds is not None else ", reused"))
    print(f"server: {' '.join(server_command(args.server, args.db, 0)[:-2])}; CPUs: {os.cpu_count()}")
    print(f"{PATH} (1 client, {len(single)} requests): p50 {ms(single, 0.5)}, p95 {ms(single, 0.95)}, "
          f"p99 {ms(single, 0.99)}   [target p50 < 30 ms]")
    print(f"{PATH} ({args.clients} clients, {args.seconds:g} s): {figures['rate']:.0f} req/s, "
          f"p50 {ms(loaded, 0.5)}, p95 {ms(loaded, 0.95)}   [target >= 300 req/s]")
    for sort, values in cold.items():
        print(f"uncached list_movies?limit=50&sort_by={sort}&page=<random> ({len(values)} pages): "
              f"first {values[0] * 1000:.0f} ms (fills the count or ordering cache), then p50 {ms(values[1:], 0.5)}, "
              f"p95 {ms(values[1:], 0.95)}")
    if args.json:
        summary = {"p50_ms": statistics.median(single) * 1000, "req_per_s": figures["rate"],
                   "loaded_p50_ms": statistics.median(loaded) * 1000,
                   "cold_first_ms": {sort: v[0] * 1000 for sort, v in cold.items()},
                   "cold_p50_ms": {sort: statistics.median(v[1:]) * 1000 for sort, v in cold.items()}}
        print(json.dumps(summary))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=Path("/tmp/yts-mirror-bench-api.db"),
                        help="mirror file; built if missing (default %(default)s)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the mirror even if the file exists")
    parser.add_argument("--movies", type=int, default=70_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--server", choices=("yts-mirror", "datasette"), default="yts-mirror")
    parser.add_argument("--requests", type=int, default=500, help="single-client requests")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="throughput run length")
    parser.add_argument("--cold", type=int, default=40, help="uncached pages per sort")
    parser.add_argument("--json", action="store_true", help="also print a JSON summary")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    build_seconds = None
    if args.rebuild or not args.db.exists():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{args.db}{suffix}").unlink(missing_ok=True)
        print(f"building a {args.movies}-movie mirror in {args.db} ...", file=sys.stderr)
        build_seconds = build_mirror(args.db, args.movies, args.seed)
    else:
        store.open_db(args.db).close()  # apply schema.sql (indexes) to a reused file
    if args.server == "yts-mirror" and not shutil.which("yts-mirror", path=str(Path(sys.executable).parent)):
        raise SystemExit("yts-mirror is not installed in this environment; use --server datasette")
    port = free_port()
    server = subprocess.Popen(server_command(args.server, args.db, port), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        figures = asyncio.run(measure(args, port))
    finally:
        server.terminate()
        server.wait(timeout=10)
    report(args, build_seconds, figures)


if __name__ == "__main__":
    main()

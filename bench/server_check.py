"""Measure how many requests/s ``feedserver.py`` sustains against a tight aiohttp client.

The client runs in this process and the server in its own, so the figures are
a lower bound on the server's capacity (the client is usually the limit).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from feedserver import start_server, stop_server  # noqa: E402


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    accept_encoding: str
    conditional: bool


MODES = (
    Mode("200 identity", "identity", False),
    Mode("200 gzip", "gzip", False),
    Mode("304 If-None-Match", "gzip", True),
)


async def fetch_etags(session: aiohttp.ClientSession, urls: list[str]) -> dict[str, str]:
    etags: dict[str, str] = {}
    for url in urls:
        async with session.get(url, headers={"Accept-Encoding": "gzip"}) as response:
            await response.read()
            etags[url] = response.headers["ETag"]
    return etags


async def worker(
    session: aiohttp.ClientSession, queue: list[str], mode: Mode, etags: dict[str, str], statuses: dict[int, int]
) -> int:
    nbytes = 0
    while queue:
        url = queue.pop()
        headers = {"Accept-Encoding": mode.accept_encoding}
        if mode.conditional:
            headers["If-None-Match"] = etags[url]
        async with session.get(url, headers=headers, auto_decompress=False) as response:
            nbytes += len(await response.read())
            statuses[response.status] = statuses.get(response.status, 0) + 1
    return nbytes


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process, from /proc (0.0 where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(base_url: str, server_pid: int, n_feeds: int, requests: int, concurrency: int) -> None:
    urls = [f"{base_url}/feeds/{i % n_feeds}.xml" for i in range(requests)]
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        etags = await fetch_etags(session, urls[:n_feeds])
        for mode in MODES:
            queue = list(urls)
            statuses: dict[int, int] = {}
            cpu_before = cpu_seconds(server_pid)
            started = time.perf_counter()
            sizes = await asyncio.gather(*(worker(session, queue, mode, etags, statuses) for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
            server_cpu = cpu_seconds(server_pid) - cpu_before
            capacity = requests / server_cpu if server_cpu else float("nan")
            print(
                f"{mode.name:<18} {requests / elapsed:>7.0f} req/s  {sum(sizes) / elapsed / 1e6:>6.1f} MB/s  "
                f"server busy {server_cpu / elapsed:>4.0%}  server capacity ~{capacity:.0f} req/s per core  "
                f"statuses {statuses}"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    server, base_url = start_server(args.feeds, args.items)
    try:
        print(f"feed server {base_url}; {args.requests} requests, {args.concurrency} connections")
        asyncio.run(measure(base_url, server.pid, args.feeds, args.requests, args.concurrency))
    finally:
        stop_server(server)


if __name__ == "__main__":
    main()

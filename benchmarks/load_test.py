"""Load test of `prosody-vae serve` on loopback: N closed-loop clients, bounded in count and time.

    python benchmarks/load_test.py --checkpoint /work/demo_model/run/checkpoints/best.pt
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --clients 1 8 --requests 8

With --checkpoint it starts the server itself (a `prosody-vae serve` subprocess on a free port,
with --max-queue so that 32 clients overflow it) and stops it after. Each client sends
POST /v1/synthesize (WAV answer) with its own texts, one request after the other, until it has
sent --requests or --seconds have passed; a 429 is counted and the client waits its Retry-After.
Per N it reports requests/s (successful answers over wall time), p50/p95 latency of the
successful answers, the batch sizes the worker formed (from /healthz, before and after), the
429s and every other error (which should be 0); and, for a server it started, the server's CPU
seconds per answer (Linux: /proc), which shows what batching saves whatever else the machine
runs, and the load average (1 min) at the level's end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import tempfile
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import httpx
import numpy as np

# short sentences of similar length, so batch members finish at about the same decoder step
SUBJECTS = ["The old man", "A small child", "My sister", "The teacher", "Our neighbour", "The driver",
            "A tired nurse", "The farmer"]
ACTIONS = ["opened the door", "read the letter", "fed the birds", "found the keys", "crossed the road",
           "painted the wall", "closed the gate", "washed the cups"]


def text_for(client: int, request: int) -> str:
    return f"{SUBJECTS[(client + request) % len(SUBJECTS)]} {ACTIONS[(client * 3 + request) % len(ACTIONS)]}."


@dataclass
class LevelReport:
    clients: int
    requests_ok: int
    wall_s: float
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    batch_sizes: dict[str, int]
    rejected_429: int
    errors: int
    error_samples: list[str] = field(default_factory=list)
    server_cpu_s_per_request: Optional[float] = None  # None: not a server this script started
    load_average: float = 0.0

    def line(self) -> str:
        cpu = "" if self.server_cpu_s_per_request is None else f", server CPU {self.server_cpu_s_per_request:.3f} s/req"
        return (f"N={self.clients:>3}: {self.requests_ok:>4} ok in {self.wall_s:6.2f} s = {self.requests_per_s:6.2f} "
                f"req/s, p50 {self.p50_ms:7.1f} ms, p95 {self.p95_ms:7.1f} ms, 429s {self.rejected_429}, "
                f"errors {self.errors}{cpu}, batch sizes {self.batch_sizes}, load average {self.load_average:.1f}")


async def _client(http: httpx.AsyncClient, client: int, requests: int, deadline: float, latencies: list,
                  outcome: Counter, samples: list) -> None:
    for k in range(requests):
        if time.monotonic() > deadline:
            return
        started = time.monotonic()
        try:
            response = await http.post("/v1/synthesize", json={"text": text_for(client, k), "seed": 0})
        except httpx.HTTPError as exc:
            outcome["error"] += 1
            samples.append(f"{type(exc).__name__}: {exc}")
            continue
        if response.status_code == 200 and response.content[:4] == b"RIFF":
            latencies.append(time.monotonic() - started)
            outcome["ok"] += 1
        elif response.status_code == 429:
            outcome["429"] += 1
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
        else:
            outcome["error"] += 1
            samples.append(f"{response.status_code}: {response.text[:200]}")


def cpu_seconds(pid: Optional[int]) -> Optional[float]:
    """User + system CPU time of a process, from /proc (None elsewhere, or without a pid)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


async def run_level(url: str, clients: int, requests: int, seconds: float, headers: dict,
                    server_pid: Optional[int] = None) -> LevelReport:
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=seconds + 60, limits=limits, headers=headers) as http:
        before = Counter((await http.get("/healthz")).json()["batch_sizes"])
        latencies, outcome, samples = [], Counter(), []
        cpu_before = cpu_seconds(server_pid)
        started = time.monotonic()
        await asyncio.gather(*(_client(http, c, requests, started + seconds, latencies, outcome, samples)
                               for c in range(clients)))
        wall = time.monotonic() - started
        cpu_after = cpu_seconds(server_pid)
        after = Counter((await http.get("/healthz")).json()["batch_sizes"])
    formed = {size: n for size, n in sorted((after - before).items(), key=lambda kv: int(kv[0]))}
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    cpu = None if cpu_before is None or cpu_after is None or not outcome["ok"] else (
        (cpu_after - cpu_before) / outcome["ok"])
    return LevelReport(clients, outcome["ok"], wall, outcome["ok"] / wall, float(np.percentile(ms, 50)),
                       float(np.percentile(ms, 95)), formed, outcome["429"], outcome["error"], samples[:5],
                       cpu, os.getloadavg()[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, port: int, extra: list[str], timeout: float = 300) -> subprocess.Popen:
    """`prosody-vae serve` in a subprocess, returned once /healthz answers (it loads and warms up first)."""
    command = [sys.executable, "-m", "prosody_vae", "serve", "--checkpoint", str(checkpoint), "--port", str(port),
               *extra]
    # its log goes to a file: a pipe nobody drains fills up (64 KiB of access-log lines) and the
    # server then blocks on its next log write, mid-request
    log = tempfile.TemporaryFile("w+")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"the server exited with {server.returncode}: {log.read()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"the server did not answer /healthz within {timeout} s")


def main(argv: list[str] | None = None) -> list[LevelReport]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--checkpoint", type=Path, help="start a server on this checkpoint")
    target.add_argument("--url", help="test a running server")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="N, one level each")
    parser.add_argument("--requests", type=int, default=16, help="requests per client, at most")
    parser.add_argument("--seconds", type=float, default=60.0, help="time per level, at most")
    parser.add_argument("--server-args", default="--max-batch 8 --max-wait-ms 10 --max-queue 16 --vocoder auto",
                        help="extra `prosody-vae serve` arguments (with --checkpoint)")
    parser.add_argument("--token", default=os.environ.get("PROSODY_VAE_TOKEN"))
    parser.add_argument("--json", type=Path, help="also write the reports here")
    args = parser.parse_args(argv)

    server = None
    url = args.url
    if args.checkpoint is not None:
        port = free_port()
        server = start_server(args.checkpoint, port, args.server_args.split())
        url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        reports = []
        for clients in args.clients:
            report = asyncio.run(run_level(url, clients, args.requests, args.seconds, headers,
                                           server.pid if server else None))
            print(report.line(), flush=True)
            reports.append(report)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    by_n = {r.clients: r for r in reports}
    if 1 in by_n and 8 in by_n and by_n[1].requests_per_s > 0:
        print(f"throughput N=8 / N=1: {by_n[8].requests_per_s / by_n[1].requests_per_s:.2f}x")
        if by_n[8].server_cpu_s_per_request:
            print(f"server CPU per answer N=1 / N=8: "
                  f"{by_n[1].server_cpu_s_per_request / by_n[8].server_cpu_s_per_request:.2f}x")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in reports], indent=2) + "\n")
    return reports


if __name__ == "__main__":
    main()

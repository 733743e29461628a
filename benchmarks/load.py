"""A bounded load test of `panosync serve` on loopback: many clients mixing every route while jobs run.

    python benchmarks/load.py                       # 20 clients, 300 requests, pocket: writes benchmarks/LOAD.md
    python benchmarks/load.py --quick --out /tmp/x  # 5 clients, 40 requests (the test suite runs this)

It starts a real server (`python -m panosync.cli serve`, the bundled pocket model, a fresh state
folder, a free port), then `--clients` clients send `--requests` requests in all, each drawn from a
seeded mix: queue a small job (some with `Prefer: wait`, some synced, some ControlSync-free
MultiDiffusion), read a job, list jobs, cancel a job, read an output, ask for /health. Every request's
latency is recorded by route. After the last request the test waits for every accepted job to finish
and counts the outcomes: a job accepted (201) that the server no longer knows is lost; one still queued
or running at the deadline is stuck. Neither may happen. The figures: p50, p99 and the largest latency
of each route, status codes per route, jobs by outcome, the whole run's throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

# Small jobs of the bundled model (64-pixel windows): a fraction of a second each on a CPU, so that
# the queue moves while the clients hammer the routes.
JOB = dict(prompt="snowy mountains", width=128, height=64, num_inference_steps=2)
FINISHED = ("succeeded", "failed", "canceled")


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)
    transport_errors: dict[str, int] = field(default_factory=dict)
    accepted: list[str] = field(default_factory=list)

    def record(self, route: str, seconds: float, status: int | None) -> None:
        self.latencies.setdefault(route, []).append(seconds)
        if status is None:
            self.transport_errors[route] = self.transport_errors.get(route, 0) + 1
        else:
            codes = self.statuses.setdefault(route, {})
            codes[status] = codes.get(status, 0) + 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: str, state_dir: Path, port: int, max_queue: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "panosync.cli", "serve", "--model", model, "--state-dir", str(state_dir),
               "--port", str(port), "--max-queue", str(max_queue), "--device", "cpu"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1",
                   "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_until_up(server: subprocess.Popen, url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not answer /health in {timeout:.0f} s")
        time.sleep(0.25)


async def timed(tally: Tally, http: httpx.AsyncClient, route: str, method: str, path: str, **options):
    started = time.perf_counter()
    try:
        response = await http.request(method, path, **options)
    except httpx.TransportError:
        tally.record(route, time.perf_counter() - started, None)
        return None
    tally.record(route, time.perf_counter() - started, response.status_code)
    return response


async def one_request(tally: Tally, http: httpx.AsyncClient, draw: random.Random, wait_seconds: int) -> None:
    """One request of the mix, on a job this run knows where it needs one."""
    kind = draw.choices(["post", "post_wait", "get", "list", "cancel", "output", "health"],
                        weights=[25, 8, 30, 10, 10, 10, 7])[0]
    known = tally.accepted
    if kind in ("get", "cancel", "output") and not known:
        kind = "post"
    if kind in ("post", "post_wait"):
        body = dict(JOB, seed=draw.randrange(2**32), sync_weight=draw.choice([0.0, 0.0, 20.0]))
        headers = {"Prefer": f"wait={wait_seconds}"} if kind == "post_wait" else {}
        route = "POST /predictions" + (" (Prefer: wait)" if headers else "")
        response = await timed(tally, http, route, "POST", "/predictions", json=body, headers=headers,
                               timeout=wait_seconds + 60)
        if response is not None and response.status_code == 201:
            known.append(response.json()["id"])
    elif kind == "get":
        await timed(tally, http, "GET /predictions/{id}", "GET", f"/predictions/{draw.choice(known)}")
    elif kind == "list":
        await timed(tally, http, "GET /predictions", "GET", "/predictions", params={"limit": 20})
    elif kind == "cancel":
        await timed(tally, http, "POST /predictions/{id}/cancel", "POST", f"/predictions/{draw.choice(known)}/cancel")
    elif kind == "output":
        await timed(tally, http, "GET /predictions/{id}/output.png", "GET",
                    f"/predictions/{draw.choice(known)}/output.png")
    else:
        await timed(tally, http, "GET /health", "GET", "/health")


async def load(url: str, clients: int, requests: int, seed: int, wait_seconds: int) -> tuple[Tally, float]:
    tally = Tally()
    remaining = iter(range(requests))

    async def client(index: int) -> None:
        draw = random.Random(seed * 1000 + index)
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            for _ in remaining:  # the clients share the request budget
                await one_request(tally, http, draw, wait_seconds)

    started = time.perf_counter()
    await asyncio.gather(*(client(index) for index in range(clients)))
    return tally, time.perf_counter() - started


def outcomes(url: str, accepted: list[str], deadline_seconds: float) -> dict:
    """Wait for every accepted job to finish; count them by status, the lost and the stuck."""
    deadline = time.monotonic() + deadline_seconds
    statuses: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=30) as http:
        pending = list(dict.fromkeys(accepted))
        while pending:
            still = []
            for job_id in pending:
                response = http.get(f"/predictions/{job_id}")
                if response.status_code == 404:
                    statuses[job_id] = "lost"
                elif response.json()["status"] in FINISHED:
                    statuses[job_id] = response.json()["status"]
                else:
                    still.append(job_id)
            pending = still
            if pending and time.monotonic() > deadline:
                statuses.update({job_id: "stuck" for job_id in pending})
                break
            if pending:
                time.sleep(0.5)
    counts: dict[str, int] = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    return dict(accepted=len(statuses), **{status: counts.get(status, 0)
                                          for status in ("succeeded", "canceled", "failed", "lost", "stuck")})


def route_figures(tally: Tally) -> dict:
    figures = {}
    for route, values in sorted(tally.latencies.items()):
        milliseconds = np.array(values) * 1000
        figures[route] = dict(requests=len(values), p50_ms=float(np.percentile(milliseconds, 50)),
                              p99_ms=float(np.percentile(milliseconds, 99)), max_ms=float(milliseconds.max()),
                              statuses={str(code): count for code, count in sorted(tally.statuses.get(route, {}).items())},
                              transport_errors=tally.transport_errors.get(route, 0))
    return figures


def markdown(report: dict) -> str:
    setup, jobs = report["setup"], report["jobs"]
    lines = ["# Load test of `panosync serve`", "",
             f"{setup['machine']}; {setup['clients']} clients, {setup['requests']} requests in "
             f"{report['seconds']:.1f} s ({setup['requests'] / report['seconds']:.1f} requests/s), model "
             f"{setup['model']} on the CPU, jobs {JOB['width']}×{JOB['height']}, {JOB['num_inference_steps']} steps "
             f"(a third synced), `Prefer: wait={setup['wait_seconds']}` on some, queue bound {setup['max_queue']}; "
             f"written by benchmarks/load.py.", "",
             "| route | requests | p50 ms | p99 ms | max ms | status codes | transport errors |",
             "|---|---|---|---|---|---|---|"]
    for route, figure in report["routes"].items():
        codes = ", ".join(f"{code}: {count}" for code, count in figure["statuses"].items())
        lines.append(f"| {route} | {figure['requests']} | {figure['p50_ms']:.1f} | {figure['p99_ms']:.1f} | "
                     f"{figure['max_ms']:.1f} | {codes} | {figure['transport_errors']} |")
    lines += ["", f"Jobs accepted: {jobs['accepted']}; succeeded {jobs['succeeded']}, canceled {jobs['canceled']}, "
                  f"failed {jobs['failed']}; lost {jobs['lost']}, stuck {jobs['stuck']} (after waiting "
                  f"{report['drain_seconds']:.1f} s for the queue to drain).", ""]
    return "\n".join(lines)


def run(model: str, clients: int, requests: int, seed: int, wait_seconds: int, max_queue: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(model, Path(scratch) / "state", port, max_queue)
        try:
            wait_until_up(server, url)
            tally, seconds = asyncio.run(load(url, clients, requests, seed, wait_seconds))
            drained = time.perf_counter()
            jobs = outcomes(url, tally.accepted, deadline_seconds=300)
            drain_seconds = time.perf_counter() - drained
            alive = server.poll() is None
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return dict(setup=dict(model=model, clients=clients, requests=requests, seed=seed, wait_seconds=wait_seconds,
                           max_queue=max_queue, machine=machine),
                seconds=seconds, drain_seconds=drain_seconds, server_alive_after=alive, routes=route_figures(tally),
                jobs=jobs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pocket")
    parser.add_argument("--clients", type=int, default=None, help="default 20 (--quick: 5)")
    parser.add_argument("--requests", type=int, default=None, help="default 300 (--quick: 40)")
    parser.add_argument("--wait", type=int, default=5, help="seconds a `Prefer: wait` request asks for (5)")
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="the test suite's size")
    parser.add_argument("--out", type=Path, default=None, help="folder for LOAD.md and LOAD.json (default benchmarks/)")
    args = parser.parse_args(argv)
    clients = args.clients or (5 if args.quick else 20)
    requests = args.requests or (40 if args.quick else 300)
    report = run(args.model, clients, requests, args.seed, args.wait, args.max_queue)
    out = args.out or HERE
    out.mkdir(parents=True, exist_ok=True)
    (out / "LOAD.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (out / "LOAD.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A low-overhead HTTP/1.1 load generator for benchmarks: asyncio streams, keep-alive, no parsing
beyond the status line, the headers and Content-Length.

Closed loop: N clients, each sending its next request when the last is answered. Open loop:
requests start at fixed arrival times (Poisson, seeded) whether or not earlier ones are answered,
each on a free keep-alive connection or a new one, so a slow server cannot slow the arrivals
(the coordinated-omission trap). Every response is recorded with its status, latency and body.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Request:
    body: bytes
    content_type: str = "image/jpeg"
    path: str = "/predict"
    headers: tuple[tuple[str, str], ...] = ()
    kind: str = "good"  # what the caller meant by it: good, or the kind of bad input

    def encode(self, host: str) -> bytes:
        lines = [f"POST {self.path} HTTP/1.1", f"Host: {host}", f"Content-Type: {self.content_type}"]
        lines += [f"Content-Length: {len(self.body)}", *(f"{k}: {v}" for k, v in self.headers), "", ""]
        return "\r\n".join(lines).encode() + self.body


@dataclass
class Result:
    kind: str
    status: int  # 0: no answer (connection error)
    latency_s: float
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    started: float = 0.0
    fresh: bool = False  # sent on a connection opened for it
    late_s: float = 0.0  # open loop: how long after its planned arrival it was sent (the generator's lag)


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
        return cls(reader, writer)

    async def exchange(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        self.writer.write(raw)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body

    def close(self) -> None:
        self.writer.close()


class Target:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[Connection] = []
        self.opened = 0
        self.stale = 0  # pooled connections found closed by the server and replaced
        self.errors: list[str] = []

    async def send(self, request: Request) -> Result:
        start = time.perf_counter()
        raw = request.encode(self.host)
        while True:
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else None
            try:
                if conn is None:
                    conn = await Connection.open(self.host, self.port)
                    self.opened += 1
                status, headers, body = await conn.exchange(raw)
                break
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                if conn is not None:
                    conn.close()
                # A pooled connection the server closed while idle (keep-alive timeout): retry on a
                # new one, as HTTP clients do. A failure on a fresh connection is a real one.
                if (
                    reused
                    and isinstance(exc, asyncio.IncompleteReadError | ConnectionError)
                    and not getattr(exc, "partial", b"")
                ):
                    self.stale += 1
                    continue
                self.errors.append(f"{type(exc).__name__}: {exc}")
                return Result(request.kind, 0, time.perf_counter() - start, started=start)
        if headers.get("connection", "").lower() == "close":
            conn.close()
        else:
            self._idle.append(conn)
        return Result(request.kind, status, time.perf_counter() - start, body, headers, start, fresh=not reused)

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


async def closed_loop(
    target: Target, pick: Callable[[int], Request], clients: int, seconds: float | None, total: int | None = None
) -> tuple[list[Result], float]:
    """``clients`` loops for ``seconds`` (or until ``total`` requests); returns results and elapsed."""
    results: list[Result] = []
    counter = iter(range(total if total is not None else 1 << 62))
    stop = time.perf_counter() + seconds if seconds is not None else float("inf")

    async def client() -> None:
        for i in counter:
            if time.perf_counter() >= stop:
                return
            results.append(await target.send(pick(i)))

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return results, time.perf_counter() - start


async def open_loop(
    target: Target, pick: Callable[[int], Request], rate: float, seconds: float, seed: int = 0
) -> tuple[list[Result], float]:
    """Poisson arrivals at ``rate``/s for ``seconds``; waits for every answer; returns results, span."""
    rng = random.Random(seed)
    arrivals: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            break
        arrivals.append(t)
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks: list[asyncio.Task[Result]] = []
    lateness: list[float] = []
    for i, at in enumerate(arrivals):
        delay = start + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lateness.append(max(0.0, -delay))
        tasks.append(asyncio.ensure_future(target.send(pick(i))))
    results = await asyncio.gather(*tasks)
    for result, late in zip(results, lateness, strict=True):
        result.late_s = late
    return list(results), loop.time() - start


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run the generator on uvloop, as the server runs: the client's own overhead counts in every latency."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]

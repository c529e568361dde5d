"""The worker channel carries whole messages of any size on both event loops uvicorn may run.

The far end is a real spawned process with a plain blocking ``Connection``, as a worker has: under
uvloop the near end's descriptor is non-blocking, which is how results of a megabyte and more
used to stop half way (issue 26)."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import threading
import time
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import pytest
import uvloop

from pdserve.runtime.channel import AsyncChannel, FrameReader, frame
from pdserve.runtime.worker import next_message

pytestmark = pytest.mark.timeout(120)
SIZES = [0, 1, 4095, 1 << 20, 5 << 20, 24 << 20]  # up to a 1x3x640x640 float32 tensor's JSON size


def _echo(conn: Connection) -> None:
    """A worker's side: blocking recv, a reply built from the request, blocking send."""
    while True:
        msg = conn.recv()
        if msg is None:
            break
        conn.send(("done", msg[0], np.full(msg[1], 7, np.uint8)))


def _run(loop: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if loop == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_large_messages_both_ways(loop: str) -> None:
    async def main() -> None:
        ctx = mp.get_context("spawn")
        near, far = ctx.Pipe()
        proc = ctx.Process(target=_echo, args=(far,), daemon=True)
        proc.start()
        far.close()
        got: asyncio.Queue[Any] = asyncio.Queue()
        channel = AsyncChannel(near, asyncio.get_running_loop(), got.put_nowait, lambda: got.put_nowait(None))
        try:
            for i, size in enumerate(SIZES):
                channel.send((i, size, np.zeros(size, np.uint8)))  # the request is as large as the reply
                kind, index, reply = await asyncio.wait_for(got.get(), 60)
                assert (kind, index, reply.shape) == ("done", i, (size,))
                assert size == 0 or reply[-1] == 7
            # Several queued at once, answered in order.
            for i in range(4):
                channel.send((i, 3 << 20, b""))
            assert [(await asyncio.wait_for(got.get(), 60))[1] for _ in range(4)] == [0, 1, 2, 3]
            channel.send(None)
            assert await asyncio.wait_for(got.get(), 60) is None  # EOF: on_closed
            assert channel.closed
        finally:
            channel.close()
            await asyncio.to_thread(proc.join, 10)
            if proc.is_alive():
                proc.kill()

    _run(loop, main)


def test_a_reader_that_stops_stalls_only_its_own_write() -> None:
    """The far end never reads: send returns at once and the loop stays free; close drops the rest."""

    async def main() -> None:
        near, far = mp.Pipe()
        channel = AsyncChannel(near, asyncio.get_running_loop(), lambda m: None, lambda: None)
        channel.send(b"x" * (32 << 20))  # far more than any socket buffer
        await asyncio.sleep(0.05)  # the loop keeps running
        channel.close()
        far.close()
        with pytest.raises(BrokenPipeError, match="closed"):
            channel.send(b"more")

    uvloop.run(main())


def test_frames_match_connection_wire_format() -> None:
    """What the worker's ``Connection.send`` writes, the reader parses, one byte at a time too."""
    a, b = mp.Pipe()
    a.send({"x": [1, 2, 3]})
    wire = b.recv_bytes()  # the body; rebuild the header as Connection does
    stream = b"".join(bytes(p) for p in frame({"x": [1, 2, 3]}))
    assert stream.endswith(wire)
    reader = FrameReader()
    got = []
    for byte in stream:
        view = reader.want()
        view[0] = byte
        got += reader.feed(view, 1)
    assert got == [{"x": [1, 2, 3]}]
    a.close()
    b.close()


# ---- the worker's wait for the next message (issue 22) ----------------------------------------------


@pytest.mark.parametrize("spin_s", [0.0, 0.05])
def test_the_worker_gets_each_message_whether_it_arrives_while_polling_or_after(spin_s: float) -> None:
    """A message sent at once arrives during the spin; one sent after a 0.2 s pause, after it, by the
    blocking receive; an already waiting one without polling."""
    near, far = mp.Pipe()

    def send() -> None:
        near.send("now")
        time.sleep(0.2)
        near.send("later")

    sender = threading.Thread(target=send)
    sender.start()
    assert next_message(far, spin_s) == "now"
    assert next_message(far, spin_s) == "later"
    sender.join()
    near.send("waiting")
    assert next_message(far, spin_s) == "waiting"
    near.close()
    with pytest.raises(EOFError):  # the parent gone: the worker's loop ends as it does without polling
        next_message(far, spin_s)

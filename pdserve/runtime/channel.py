"""The server's end of a worker pipe, on the event loop: whole messages of any size, never blocking.

The worker keeps a plain blocking ``multiprocessing.Connection``; this end speaks the same wire
format (a 4-byte big-endian length, or -1 and an 8-byte length, then the pickle) over a
non-blocking descriptor. Why not ``Connection.recv``/``send`` here: uvloop (what uvicorn runs on
when it is installed) puts every descriptor it watches into non-blocking mode, and a
``Connection`` does not expect that. A message larger than the socket buffer (about 1 MB: one
1x3x640x640 float32 tensor is 4.9 MB) then stops half way with ``BlockingIOError``: the rest of a
result is never read, or the rest of a request is never written, and the worker waits for bytes
that never come until it is killed as hung. Here reads and writes go as far as the socket allows
and resume when it is ready again, under asyncio's own loop and uvloop alike; a worker that stops
reading can stall only its own pending write, never the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

log = logging.getLogger(__name__)
_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")
_CHUNK = 1 << 20


def frame(obj: object) -> list[bytes | memoryview]:
    """``obj`` as ``Connection.send`` puts it on the wire: header, then the pickle."""
    body = ForkingPickler.dumps(obj)
    n = len(body)
    header = _SHORT.pack(n) if n <= 0x7FFFFFFF else _SHORT.pack(-1) + _LONG.pack(n)
    return [header, memoryview(body)]


class FrameReader:
    """Splits a byte stream into the pickled messages of ``Connection``'s wire format."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._body: bytearray | None = None
        self._filled = 0

    def want(self) -> memoryview:
        """The buffer the next bytes go into."""
        if self._body is not None:
            return memoryview(self._body)[self._filled :]
        need = 4 if len(self._head) < 4 or _SHORT.unpack_from(self._head)[0] != -1 else 12
        return memoryview(bytearray(need - len(self._head)))

    def feed(self, view: memoryview, n: int) -> list[Any]:
        """Account for ``n`` bytes just written into ``view`` (from ``want``); return whole messages."""
        messages = []
        if self._body is not None:
            self._filled += n
        else:
            self._head += view[:n]
            size = self._size()
            if size is not None:
                self._body, self._filled = bytearray(size), 0
        if self._body is not None and self._filled == len(self._body):
            messages.append(ForkingPickler.loads(self._body))
            self._head, self._body, self._filled = bytearray(), None, 0
        return messages

    def _size(self) -> int | None:
        if len(self._head) < 4:
            return None
        (n,) = _SHORT.unpack_from(self._head)
        if n != -1:
            return int(n)
        return int(_LONG.unpack_from(self._head, 4)[0]) if len(self._head) >= 12 else None


class AsyncChannel:
    """Sends and receives whole messages on a ``Connection``'s descriptor without blocking the loop.

    ``on_message`` gets each message in order; ``on_closed`` is called once when the other end is
    gone (EOF or an error). ``send`` never blocks: what the socket does not take now is written
    when it is writable again."""

    def __init__(
        self,
        conn: Connection,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[Any], None],
        on_closed: Callable[[], None],
    ) -> None:
        self._conn = conn
        self._fd = conn.fileno()
        self._loop = loop
        self._on_message = on_message
        self._on_closed = on_closed
        self._reader = FrameReader()
        self._out: deque[memoryview] = deque()
        self._writing = False
        self.closed = False
        os.set_blocking(self._fd, False)
        loop.add_reader(self._fd, self._readable)

    # ---- receiving -------------------------------------------------------------------------------
    def _readable(self) -> None:
        for _ in range(64):  # bounded: let other callbacks run between large reads
            view = self._reader.want()[:_CHUNK]
            try:
                n = os.readv(self._fd, [view])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close()
                return
            if n == 0:
                self._close()
                return
            try:
                messages = self._reader.feed(view, n)
            except Exception:  # not a message this side can read: the other end is not to be trusted
                log.exception("a worker sent a message that cannot be read")
                self._close()
                return
            for message in messages:
                if self.closed:
                    return
                self._on_message(message)

    # ---- sending ---------------------------------------------------------------------------------
    def send(self, obj: object) -> None:
        """Queue ``obj``; raises ``OSError`` if the channel is closed."""
        if self.closed:
            raise BrokenPipeError("the worker's channel is closed")
        self._out.extend(memoryview(part).cast("B") for part in frame(obj))
        if not self._writing:
            self._flush()

    def _flush(self) -> None:
        while self._out:
            head = self._out[0]
            try:
                n = os.write(self._fd, head[:_CHUNK])
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close()
                return
            if n == len(head):
                self._out.popleft()
            else:
                self._out[0] = head[n:]
        if self._out and not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._flush)
        elif not self._out and self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)

    # ---- closing ---------------------------------------------------------------------------------
    def _close(self) -> None:
        if self.closed:
            return
        self.close()
        self._on_closed()

    def close(self) -> None:
        """Stop watching the descriptor and close it; pending writes are dropped."""
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
        self._out.clear()
        with contextlib.suppress(OSError):
            self._conn.close()

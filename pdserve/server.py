"""Running the app under uvicorn with a drain that lives in the app, not in a Kubernetes hook.

On the first SIGTERM or SIGINT: ``/readyz`` turns 503 at once, requests are still accepted for
``drain_delay_s``, then uvicorn stops listening, answers what it holds (``graceful_shutdown_s``)
and the lifespan stops the workers. A second signal skips the delay. The process exits 0: the
signal was handled, so it is not raised again after shutdown (uvicorn's default would make the
exit status 143 and tell Docker and Kubernetes the container failed).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from pdserve.lifecycle import Lifecycle
from pdserve.settings import Settings

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, drain_delay_s: float) -> None:
        super().__init__(config)
        self._lifecycle = lifecycle
        self._drain_delay_s = drain_delay_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in a signal handler: only flags and a thread-safe wake-up of the loop.
        if self._draining or self._loop is None:  # a second signal: skip the delay, then stop waiting
            if self.should_exit:
                self.force_exit = True
            self._lifecycle.refuse()
            self.should_exit = True
            return
        self._draining = True
        self._lifecycle.drain()
        self._loop.call_soon_threadsafe(self._schedule_exit)

    def begin_drain(self) -> None:
        """What a signal does, callable from the loop (tests run the server in a thread)."""
        self._draining = True
        self._lifecycle.drain()
        self._schedule_exit()

    def _schedule_exit(self) -> None:
        assert self._loop is not None
        log.info("draining: /readyz is 503; accepting requests for %.1fs more", self._drain_delay_s)
        self._loop.call_later(self._drain_delay_s, self._stop_accepting)

    def _stop_accepting(self) -> None:
        log.info("drain delay over: refusing new requests, finishing accepted ones")
        self._lifecycle.refuse()
        self.should_exit = True


def build_server(app: FastAPI, settings: Settings, **config: object) -> DrainingServer:
    uv = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # pdserve configures logging (request_log.configure_logging)
        access_log=False,  # replaced by pdserve.access, with the request id, model and timings
        timeout_graceful_shutdown=int(settings.graceful_shutdown_s),
        **config,  # type: ignore[arg-type]
    )
    return DrainingServer(uv, app.state.service.lifecycle, settings.drain_delay_s)

"""The worker process: one predictor of any kind, in a process of its own.

``predictor.run()`` holds the GIL (measured: another thread in the same process runs at 1-6% speed
meanwhile), so every predictor lives in its own process and the HTTP process never calls it. The
kind's ``KindWorker`` (``contract.py``) does the model's work; this loop only talks to the parent.

Protocol, parent -> worker: ``("attach", message)`` once after ready, ``("run", batch_id, payload)``,
``("stop",)``. Worker -> parent: ``("ready", Ready)``, ``("load_failed", message)``,
``("done", batch_id, compute_s, result)``, ``("rejected", batch_id, message)`` (the client's input
cannot go through the model), ``("failed", batch_id, message)``.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
import warnings
from multiprocessing.connection import Connection
from typing import Any

from pdserve.errors import PdserveError
from pdserve.runtime.contract import InputRefused, WorkerSpec


def ignore_group_signals() -> None:
    # The parent drains, then stops us with a message; a Ctrl-C or SIGTERM sent to the whole process
    # group must not kill in-flight work. Set again after loading: importing paddle installs handlers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def next_message(conn: Connection, spin_s: float) -> Any:
    """The parent's next message. For up to ``spin_s`` the worker polls for it, yielding the core to
    anything else runnable, before it blocks: a core left idle for a few milliseconds runs the next
    batch slower (measured: up to 3 ms of a 15-20 ms batch of one, BENCHMARKS.md, single client), and at
    one client the worker idles for as long as the HTTP process takes to answer and read the next
    request. Under load the next batch is already waiting and nothing spins."""
    if spin_s > 0 and not conn.poll(0):
        until = time.perf_counter() + spin_s
        while time.perf_counter() < until:
            os.sched_yield()
            if conn.poll(0):
                break
    return conn.recv()


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    # Below the HTTP process in CPU priority: under overload its event loop (admission, 429s,
    # health probes) and decoding threads must not wait behind inference (BENCHMARKS.md, overload).
    os.nice(spec.nice)
    warnings.filterwarnings("ignore", message="No ccache found")
    ignore_group_signals()
    try:
        worker = spec.worker(spec)
        ready = worker.setup()
        ignore_group_signals()
    except Exception as exc:
        message = str(exc) if isinstance(exc, PdserveError) else f"model {spec.model!r}: {type(exc).__name__}: {exc}"
        conn.send(("load_failed", message))
        conn.close()
        return
    conn.send(("ready", ready))
    try:
        while True:
            try:
                msg: tuple[Any, ...] = next_message(conn, spec.idle_spin_s)
            except (EOFError, OSError):  # parent gone
                break
            if msg[0] == "stop":
                break
            if msg[0] == "attach":
                worker.attach(msg[1])
                continue
            _, batch_id, payload = msg
            try:
                result, compute = worker.run(payload)
                conn.send(("done", batch_id, compute, result))
            except InputRefused as exc:  # the client's input, not the model: no traceback in the log
                conn.send(("rejected", batch_id, str(exc)))
            except Exception as exc:
                traceback.print_exc()
                conn.send(("failed", batch_id, f"{type(exc).__name__}: {exc}"))
    finally:
        worker.close()

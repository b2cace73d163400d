"""FrontProcesses: the router's HTTP front in N processes of their own (--http-processes N > 1).

The router serves its Generation service to them on a private Unix socket (a directory of mode
0700: no TLS to set up, no port to expose, whatever --host and --tls are), and each serves the
whole HTTP app on the router's HTTP port (front_process.py). They share the port with
SO_REUSEPORT, so the kernel spreads connections over them; the router binds it first, without
listening, to choose it (a port of 0) and to keep it theirs: a process that does not set
SO_REUSEPORT cannot take it, and connections only go to the listening children.

Start: every process must report that it serves within READY_TIMEOUT_SECONDS, else the router
fails to start, naming why. A process that dies later is logged (the others and gRPC go on).
Stop (after the router's drain): each is told to stop (uvicorn's graceful shutdown), then waited
for; one still running after STOP_TIMEOUT_SECONDS is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from epochserve.errors import EpochserveError
from epochserve.router.httpfront.front_process import FrontProcessSpec, readable, run_front_process
from epochserve.router.httpfront.server import STOP_TIMEOUT_SECONDS as HTTP_STOP_SECONDS
from epochserve.router.httpfront.server import bound_socket

logger = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 180.0  # transformers' import and a tokenizer, N processes at once, few cores
STOP_TIMEOUT_SECONDS = HTTP_STOP_SECONDS + 5.0  # uvicorn's graceful stop, then the process's exit
KILL_WAIT_SECONDS = 5.0


class FrontProcessError(EpochserveError):
    """An HTTP front process could not start (the message says which and why)."""


@dataclass
class _Child:
    index: int
    process: BaseProcess
    conn: Connection
    pid: int = 0


class FrontProcesses:
    """Use from the router's event loop, on its main thread (the kernel's parent-death signal
    follows the thread that started a process)."""

    def __init__(self, count: int, host: str, port: int) -> None:
        self.count = count
        self.host = host
        self.port = port
        self._socket_dir = Path(tempfile.mkdtemp(prefix="epochserve-router-"))  # mode 0700
        self.router_target = f"unix:{self._socket_dir / 'generation.sock'}"
        self._reservation: socket.socket | None = None
        self._children: list[_Child] = []
        self._is_stopping = False

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self._children]

    async def start(self, spec: FrontProcessSpec) -> int:
        """Start the processes (`spec` with each one's index and the port) and wait until every one
        serves; returns the port. Raises PortInUseError, or FrontProcessError (all stopped then)."""
        port = self._reserve_port()
        try:
            self._spawn(spec, port)
            waits = [asyncio.ensure_future(self._wait_ready(child)) for child in self._children]
            try:
                await asyncio.gather(*waits)
            finally:  # one failed: the others stop waiting (and unwatch their pipes) before stop()
                for wait in waits:
                    wait.cancel()
                await asyncio.gather(*waits, return_exceptions=True)
        except BaseException:
            await self.stop()
            raise
        loop = asyncio.get_running_loop()
        for child in self._children:
            loop.add_reader(child.process.sentinel, self._exited, child)
        logger.info("HTTP front: %d processes on port %d (pids %s)", self.count, port, self.pids)
        return port

    async def stop(self) -> None:
        """Stop every process (module doc); then the port and the socket are given back. Idempotent."""
        if self._is_stopping:
            return
        self._is_stopping = True
        loop = asyncio.get_running_loop()
        for child in self._children:
            loop.remove_reader(child.process.sentinel)
            with contextlib.suppress(OSError):  # it already exited
                child.conn.send("stop")
        ends_at = time.monotonic() + STOP_TIMEOUT_SECONDS
        while any(c.process.is_alive() for c in self._children) and time.monotonic() < ends_at:
            await asyncio.sleep(0.05)
        for child in self._children:
            if child.process.is_alive():
                logger.warning("HTTP front process %d did not stop in time: killed", child.index)
                child.process.kill()
            child.process.join(KILL_WAIT_SECONDS)
            child.conn.close()
        if self._reservation is not None:
            self._reservation.close()
        self.discard()

    def discard(self) -> None:
        """Give the socket's directory back, for a router that stops before start()."""
        shutil.rmtree(self._socket_dir, ignore_errors=True)

    def _spawn(self, spec: FrontProcessSpec, port: int) -> None:
        context = multiprocessing.get_context("spawn")
        for index in range(self.count):
            parent_end, child_end = context.Pipe()
            own = dataclasses.replace(spec, index=index, port=port)
            process = context.Process(
                target=run_front_process, args=(own, child_end), name=f"http-front-{index}", daemon=True
            )
            process.start()
            child_end.close()  # the child's copy only: its exit then reads as EOF here
            self._children.append(_Child(index, process, parent_end))

    def _reserve_port(self) -> int:
        # First without SO_REUSEPORT: a port that anything listens on (even another router's front
        # processes) is refused, as the router's own front refuses it; then the shared reservation.
        with bound_socket(self.host, self.port, reuse_port=False) as probe:
            port = int(probe.getsockname()[1])
        self._reservation = bound_socket(self.host, port, reuse_port=True)
        return port

    async def _wait_ready(self, child: _Child) -> None:
        try:
            await readable(child.conn, READY_TIMEOUT_SECONDS)
        except TimeoutError:
            raise FrontProcessError(
                f"HTTP front process {child.index} did not serve within {READY_TIMEOUT_SECONDS:g} s"
            ) from None
        try:
            kind, detail = child.conn.recv()
        except EOFError:  # it exited without a word (killed, or failed before its event loop ran)
            child.process.join(KILL_WAIT_SECONDS)
            raise FrontProcessError(
                f"HTTP front process {child.index} exited with code {child.process.exitcode} while starting"
            ) from None
        if kind != "ready":
            raise FrontProcessError(str(detail))
        child.pid = int(detail)

    def _exited(self, child: _Child) -> None:
        asyncio.get_running_loop().remove_reader(child.process.sentinel)
        if self._is_stopping:
            return
        child.process.join(0)
        alive = sum(c.process.is_alive() for c in self._children)
        logger.error(
            "HTTP front process %d (pid %d) exited with code %s: %d of %d still serve the HTTP port",
            *(child.index, child.pid, child.process.exitcode, alive, self.count),
        )

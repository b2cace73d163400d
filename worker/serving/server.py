"""Start a worker: build the engine, run its loop, serve Worker + health + reflection over gRPC.

Shutdown (SIGTERM/SIGINT): health turns NOT_SERVING, new requests get UNAVAILABLE, requests in
flight get `drain_seconds` to finish, then are aborted; the process exits 0. If the engine loop
fails, the server stops and `serve` returns 1 (the process exits non-zero).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from epochserve.errors import ConfigError
from epochserve.net import EXCLUSIVE_PORT, bind_grpc
from epochserve.proto.v1 import worker_pb2, worker_pb2_grpc
from epochserve.tls import server_credentials, server_ssl_context
from epochserve.worker.config import EngineConfig
from epochserve.worker.engine.engine import Engine
from epochserve.worker.rollout.registration import ControlPlaneSettings, join_control_plane
from epochserve.worker.serving.engine_loop import EngineLoop
from epochserve.worker.serving.link import LinkServer
from epochserve.worker.serving.responses import WorkerStamp
from epochserve.worker.serving.service import WorkerService
from epochserve.worker.tp.launcher import TPLauncher

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Longest we wait at shutdown for the engine thread to finish a step (or a collective to fail).
STEP_WAIT_SECONDS = 10.0

WORKER_SERVICE = worker_pb2.DESCRIPTOR.services_by_name["Worker"].full_name


@dataclass(frozen=True, slots=True)
class WorkerServerConfig:
    engine: EngineConfig
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port (written to ready_file)
    ready_file: Path | None = None  # JSON {host, port, worker_id, pid, tp_follower_pids} once serving
    drain_seconds: float = 30.0  # grace for in-flight requests at shutdown
    worker_id: str = ""  # default: HOSTNAME:PORT
    tp: int = 1  # tensor-parallel ranks (processes; one GPU each on CUDA)
    collective_timeout_seconds: float = 120.0  # a TP collective slower than this fails the worker
    control: ControlPlaneSettings | None = None  # None: standalone, no etcd
    session_port: int = 0  # the session link's port (0: a free one; -1: none, routers use gRPC Session)
    tls_cert_file: Path | None = None  # with tls_key_file: serve gRPC and the session link over TLS
    tls_key_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("worker TLS: give both a certificate and its key, or neither")


def load_tokenizer(model_dir: Path) -> Callable[[str], list[int]] | None:
    """The model directory's tokenizer as a text → ids function, or None when it has none."""
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return lambda text: list(tokenizer.encode(text, add_special_tokens=False))


async def start_engine(config: WorkerServerConfig) -> tuple[Engine, TPLauncher | None]:
    """Rank 0's engine; with TP > 1 the follower ranks are spawned and joined first."""
    if config.tp == 1:
        return await asyncio.to_thread(Engine, config.engine), None
    launcher = TPLauncher(config.engine, config.tp, config.collective_timeout_seconds)
    try:
        engine_config, tp, channel = await _watching_followers(launcher, launcher.start)
        engine = await _watching_followers(launcher, lambda: Engine(engine_config, tp, channel))
        return engine, launcher
    except BaseException:
        launcher.stop(timeout=0)
        raise


async def _watching_followers(launcher: TPLauncher, fn: Callable[[], T]) -> T:
    """Run fn in a thread; fail at once if a follower rank dies meanwhile (rather than wait for the
    rendezvous or a collective to time out)."""
    task = asyncio.ensure_future(asyncio.to_thread(fn))
    while not task.done():
        await asyncio.wait([task], timeout=0.5)
        dead = launcher.dead_ranks()
        if dead and not task.done():
            task.cancel()
            raise ConfigError(
                f"TP ranks {dead} exited while the worker was starting (see their errors above)"
            )
    return task.result()


async def serve(config: WorkerServerConfig) -> int:
    # The port first: a taken one fails at once (PortInUseError), not after loading the model.
    server = grpc.aio.server(options=[EXCLUSIVE_PORT])
    port = _bind(server, config)
    engine, launcher = await start_engine(config)
    try:
        return await _serve(config, engine, launcher, server, port)
    finally:
        if launcher is not None:
            launcher.stop()


async def _serve(
    config: WorkerServerConfig,
    engine: Engine,
    launcher: TPLauncher | None,
    server: grpc.aio.Server,
    port: int,
) -> int:
    loop = EngineLoop(engine)
    loop.start()
    identity = WorkerStamp(
        worker_id=config.worker_id or f"{socket.gethostname()}:{port}",
        tp_size=config.tp,
        kernel_mode=engine.kernel_mode,
    )
    service = WorkerService(
        loop, identity, load_tokenizer(config.engine.model_dir), str(config.engine.model_dir)
    )
    link = None
    if config.session_port >= 0:
        tls = None
        if config.tls_cert_file is not None and config.tls_key_file is not None:
            tls = server_ssl_context(config.tls_cert_file, config.tls_key_file)
        link = LinkServer(service, config.host, config.session_port, tls)
        await link.start()
        service.session_port = link.port
    worker_pb2_grpc.add_WorkerServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [WORKER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    await server.start()
    participant = None
    if config.control is not None:
        listen = f"{config.host}:{port}"
        participant, agent = await join_control_plane(
            config.control, loop, identity.worker_id, listen, config.tp
        )
        service.is_ready = agent.can_accept_work
    for name in ("", WORKER_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    logger.info(
        "worker %s serving on %s:%d, session link on port %s (policy version %d)",
        identity.worker_id,
        config.host,
        port,
        link.port if link is not None else "-",
        engine.policy_version,
    )
    if config.ready_file is not None:
        ready = {"host": config.host, "port": port, "worker_id": identity.worker_id, "pid": os.getpid()}
        ready["session_port"] = link.port if link is not None else 0
        ready["tp_follower_pids"] = launcher.follower_pids if launcher else []
        config.ready_file.write_text(json.dumps(ready))

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    dead: list[int] = []
    while not stop.is_set() and loop.is_running and not dead:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.5)
        dead = launcher.dead_ranks() if launcher else []
    if dead:
        logger.error("TP ranks %s exited: the worker cannot serve any more", dead)
    failed = loop.failure is not None or bool(dead)
    if participant is not None:  # deregister first: routers stop sending new work here
        with contextlib.suppress(Exception):
            await asyncio.to_thread(participant.close)
    await _shutdown(server, health_servicer, service, loop, 0.0 if failed else config.drain_seconds)
    if link is not None:
        await link.close()
    return 1 if failed else 0


def _bind(server: grpc.aio.Server, config: WorkerServerConfig) -> int:
    """Listen on config.host:port (TLS when configured); returns the bound port."""
    credentials = None
    if config.tls_cert_file is not None and config.tls_key_file is not None:
        credentials = server_credentials(config.tls_cert_file, config.tls_key_file)
    return bind_grpc(server, config.host, config.port, credentials)


async def _shutdown(
    server: grpc.aio.Server,
    health_servicer: health.aio.HealthServicer,
    service: WorkerService,
    loop: EngineLoop,
    drain_seconds: float,
) -> None:
    logger.info("shutting down: draining for up to %.0f s", drain_seconds)
    service.accepting = False
    for name in ("", WORKER_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    deadline = asyncio.get_running_loop().time() + drain_seconds
    # Every wait below is bounded: a rank stuck in a dead collective must not hang the shutdown.
    with contextlib.suppress(Exception):
        while loop.is_running and asyncio.get_running_loop().time() < deadline:
            has_work = loop.call(lambda engine: engine.has_work())
            if not await asyncio.wait_for(asyncio.wrap_future(has_work), timeout=STEP_WAIT_SECONDS):
                break
            await asyncio.sleep(0.1)
    if loop.is_running:
        with contextlib.suppress(Exception):
            aborted = loop.abort_all("worker shutting down")
            await asyncio.wait_for(asyncio.wrap_future(aborted), timeout=STEP_WAIT_SECONDS)
    await server.stop(grace=5.0)
    await asyncio.to_thread(loop.stop, STEP_WAIT_SECONDS)

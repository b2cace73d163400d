"""Run one router process: Generation + health + reflection over gRPC, the control-plane follower,
the Prometheus endpoint, the audit log and, with --http-port, the HTTP front (router/httpfront/):
in this process, or with --http-processes N > 1 in N processes of their own that reach this one's
Generation service on a private Unix socket (httpfront/front_pool.py).

Start-up: bind the port → register in etcd under a lease → read the committed epoch and switch
admission to it (and ack) → metrics and HTTP front (its tokenizer loads meanwhile) → health
SERVING, ready file. Requests that arrive before the first
epoch wait for it (bounded by their deadline), so nothing is ever pinned to a guess.

Shutdown (SIGTERM/SIGINT): health NOT_SERVING and new requests UNAVAILABLE (clients go to another
router); requests in flight get `drain_seconds`; then the registration is revoked (the lease
deleted at once, so rollouts do not wait for this router) and the process exits 0. A failed
control-plane loop stops the router the same way but exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from epochserve.channels import SERVER_OPTIONS, WORKER_CHANNEL_OPTIONS, aio_channel
from epochserve.controlplane.participants.router import RouterParticipant
from epochserve.errors import ConfigError
from epochserve.net import bind_grpc, port_errors
from epochserve.proto.v1 import generation_pb2, generation_pb2_grpc
from epochserve.router.audit import AuditLog
from epochserve.router.config import RouterConfig, ServerTls
from epochserve.router.core import RouterCore
from epochserve.router.epochs import ControlPlaneFollower
from epochserve.router.httpfront.app import build_app
from epochserve.router.httpfront.backend import RouterBackend
from epochserve.router.httpfront.codec import Codec, NoTextCodec, load_codec
from epochserve.router.httpfront.front import AdminAccess, Front
from epochserve.router.httpfront.front_pool import FrontProcesses
from epochserve.router.httpfront.front_process import FrontProcessSpec
from epochserve.router.httpfront.server import HttpServer
from epochserve.router.metrics import RouterMetrics
from epochserve.router.policies import make_policy
from epochserve.router.service import GenerationService
from epochserve.tls import read_pem

logger = logging.getLogger(__name__)

GENERATION_SERVICE = generation_pb2.DESCRIPTOR.services_by_name["Generation"].full_name
FIRST_EPOCH_TIMEOUT_SECONDS = 60.0


def build_core(config: RouterConfig) -> RouterCore:
    """The router's parts from its config (router id filled in once the port is bound)."""
    audit = AuditLog(config.audit_log) if config.audit_log is not None else None
    return RouterCore.build(
        config.router_id,
        make_policy(config.policy),
        config.queue,
        lambda address: aio_channel(address, WORKER_CHANNEL_OPTIONS, config.worker_tls),
        max_attempts=config.max_attempts,
        max_seqs_per_worker=config.max_seqs_per_worker,
        metrics=RouterMetrics(),
        audit=audit,
        use_session_link=config.use_session_link,
        link_tls=config.worker_tls,
    )


def bind(server: grpc.aio.Server, config: RouterConfig) -> int:
    """Listen on config.host:port (TLS when configured); returns the bound port."""
    credentials = None if config.tls is None else _server_credentials(config.tls)
    return bind_grpc(server, config.host, config.port, credentials)


def _server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    pairs = [(read_pem(tls.key_file), read_pem(tls.cert_file))]
    if tls.client_ca_file is None:
        return grpc.ssl_server_credentials(pairs)
    return grpc.ssl_server_credentials(
        pairs, root_certificates=read_pem(tls.client_ca_file), require_client_auth=True
    )


def run(config: RouterConfig) -> int:
    """Serve on uvloop when it is installed, else on asyncio's own loop. uvloop takes ~15-20% less
    CPU per forwarded message (bench/router_overhead.py), which on a small machine is latency."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(config))
    return uvloop.run(serve(config))


async def serve(config: RouterConfig) -> int:
    """Run until SIGTERM/SIGINT (exit code 0) or a control-plane failure (1)."""
    core = build_core(config)
    codec = asyncio.ensure_future(_load_codec(config))  # seconds (transformers): meanwhile, start up
    server, health_servicer = _grpc_server(core)
    for name in ("", GENERATION_SERVICE):  # until admission knows the committed version
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    port = bind(server, config)
    fronts = None
    if config.http_port is not None and config.http_processes > 1:
        fronts = FrontProcesses(config.http_processes, config.host, config.http_port)
    try:
        if fronts is not None and not server.add_insecure_port(fronts.router_target):
            raise ConfigError(f"cannot listen on {fronts.router_target} (the HTTP front processes' socket)")
        await server.start()
    except BaseException:
        if fronts is not None:
            fronts.discard()
        raise
    core.router_id, address = config.identity(port)
    participant = RouterParticipant(
        config.etcd, config.cluster, core.router_id, address, lease_ttl=config.lease_ttl
    )
    follower = ControlPlaneFollower(participant, core)
    metrics_server = fronts_metrics_server = None
    http_server: HttpServer | None = None
    try:
        await participant.start()
        follower.start()
        version = await follower.wait_first_epoch(FIRST_EPOCH_TIMEOUT_SECONDS)
        if config.metrics_port is not None:
            with port_errors(config.metrics_port):
                metrics_server, _ = start_http_server(
                    config.metrics_port, config.metrics_host, core.metrics.registry
                )
        http_port = None
        if fronts is not None:
            if metrics_server is not None:  # the front processes relay /metrics from there
                metrics_url = _metrics_url(config.metrics_host, metrics_server.server_port)
            else:  # or from one of their own, on loopback
                fronts_metrics_server, _ = start_http_server(0, "127.0.0.1", core.metrics.registry)
                metrics_url = _metrics_url("127.0.0.1", fronts_metrics_server.server_port)
            http_port = await fronts.start(_front_spec(config, fronts.router_target, metrics_url))
        elif config.http_port is not None:
            http_server = HttpServer(_http_app(config, core, await codec), config.host, config.http_port)
            http_port = await http_server.start()
        for name in ("", GENERATION_SERVICE):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        metrics_port = metrics_server.server_port if metrics_server is not None else None
        loop_kind = type(asyncio.get_running_loop()).__module__.split(".")[0]
        logger.info(
            "router %s serving on %s (policy version %d, metrics port %s, HTTP port %s%s, %s loop)",
            *(core.router_id, address, version, metrics_port, http_port),
            "" if fronts is None else f" in {config.http_processes} processes",
            loop_kind,
        )
        _write_ready_file(config, port, metrics_port, http_port, core.router_id)
        failed = await _wait_for_stop(follower)
        await _drain(core, health_servicer, config.drain_seconds)
        return 1 if failed else 0
    finally:
        core.is_accepting = False
        codec.cancel()
        if http_server is not None:
            await http_server.stop()
        if fronts is not None:  # before gRPC: their requests in flight are this router's
            await fronts.stop()
        await server.stop(grace=1.0)
        await follower.stop()
        with contextlib.suppress(Exception):
            await participant.close()
        await core.registry.close()
        for metrics in (metrics_server, fronts_metrics_server):
            if metrics is not None:
                metrics.shutdown()
        if core.audit is not None:
            core.audit.close()


def _grpc_server(core: RouterCore) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """Generation + health (NOT_SERVING until the first epoch) + reflection, not yet bound."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    generation_pb2_grpc.add_GenerationServicer_to_server(GenerationService(core), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    services = [GENERATION_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(services, server)
    return server, health_servicer


async def _load_codec(config: RouterConfig) -> Codec:
    if config.http_port is None or config.http_processes > 1:  # front processes load their own
        return NoTextCodec()
    return await asyncio.to_thread(load_codec, config.tokenizer)


def _http_app(config: RouterConfig, core: RouterCore, codec: Codec) -> object:
    front = Front(RouterBackend(core), codec, config.served_model_name, _admin_access(config))
    return build_app(
        front,
        max_body_bytes=config.http_max_body_bytes,
        api_key=config.api_key(),
        metrics=core.metrics.registry,
    )


def _admin_access(config: RouterConfig) -> AdminAccess | None:
    """Where /update_weights_from_disk starts rollouts; None without an Admin token."""
    token = config.admin_token()
    return AdminAccess(config.admin_address, token) if token is not None else None


def _front_spec(config: RouterConfig, router_target: str, metrics_url: str) -> FrontProcessSpec:
    """What every HTTP front process gets (front_pool.py fills in its index and the port). The API
    key and the admin token are read here, so that a bad file fails the router in one line."""
    return FrontProcessSpec(
        index=0, host=config.host, port=0, router_target=router_target, router_pid=os.getpid(),
        tokenizer=config.tokenizer, model_name=config.served_model_name,
        max_body_bytes=config.http_max_body_bytes, api_key=config.api_key(),
        admin=_admin_access(config),
        metrics_url=metrics_url, log_level=logging.getLogger().getEffectiveLevel(),
    )  # fmt: skip


_LOOPBACK_OF = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # a server on every interface


def _metrics_url(host: str, port: int) -> str:
    """The URL the front processes read this router's metrics at (its Prometheus server's)."""
    host = _LOOPBACK_OF.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"


def _write_ready_file(
    config: RouterConfig, port: int, metrics_port: int | None, http_port: int | None, router_id: str
) -> None:
    if config.ready_file is None:
        return
    ready = {"host": config.host, "port": port, "metrics_port": metrics_port, "http_port": http_port,
             "router_id": router_id}  # fmt: skip
    config.ready_file.write_text(json.dumps({**ready, "pid": os.getpid()}))


async def _wait_for_stop(follower: ControlPlaneFollower) -> bool:
    """Wait for SIGTERM/SIGINT or a follower failure; True for the latter."""
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(follower.failed.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    return follower.failed.is_set()


async def _drain(core: RouterCore, health_servicer: health.aio.HealthServicer, drain_seconds: float) -> None:
    core.is_accepting = False
    for name in ("", GENERATION_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    logger.info("router %s stopping: %d requests in flight", core.router_id, len(core.inflight))
    deadline = asyncio.get_running_loop().time() + drain_seconds
    while core.inflight and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)

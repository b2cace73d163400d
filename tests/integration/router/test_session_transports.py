"""The router's WorkerSession against real worker processes, on the session link: the link is
what it uses when the worker serves one, a silent worker (SIGSTOP) fails the link's calls with
UNAVAILABLE within the keepalive instead of hanging them, a link that cannot be opened (a TLS
front that forwards gRPC only) falls back to gRPC Session, and a worker serving TLS is reached over
a TLS link."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

import grpc
import pytest
from fixtures.grpc_client import wait_for_idle_pool
from fixtures.models import build_tiny_model
from fixtures.processes import running_worker
from integration.controlplane.certs import self_signed
from routerkit import TlsFront

from epochserve.channels import ClientTls, aio_channel
from epochserve.proto.framing import MAGIC
from epochserve.proto.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from epochserve.router.session import WorkerSession
from epochserve.router.session_link import Keepalive
from epochserve.router.waiting import Deadline

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(
        "llama", tmp_path_factory.mktemp("transports") / "model", max_position_embeddings=4096
    )


def request(request_id: str, max_tokens: int) -> common_pb2.GenerateRequest:
    sampling = common_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return common_pb2.GenerateRequest(
        request_id=request_id, prompt_token_ids=list(range(3, 20)), sampling=sampling
    )


async def run_to_end(session: WorkerSession, request_id: str, max_tokens: int) -> int:
    call = await session.start(request(request_id, max_tokens), Deadline.after(60))
    tokens = 0
    while (response := await call.read()) is not None:
        tokens += len(response.chunk.token_ids)
    return tokens


def test_a_silent_worker_fails_the_links_calls_within_the_keepalive(model_dir, tmp_path):
    with running_worker(model_dir, tmp_path, "--block-size", "16") as worker:
        stub = worker_pb2_grpc.WorkerStub(grpc.insecure_channel(worker.address))
        pid = int(worker.info["pid"])

        async def run() -> tuple[grpc.StatusCode, str, float, int]:
            async with grpc.aio.insecure_channel(worker.address) as channel:
                keepalive = Keepalive(interval=0.3, timeout=0.5)
                stub = worker_pb2_grpc.WorkerStub(channel)
                session = WorkerSession(stub, "w", link_host=HOST, keepalive=keepalive)
                call = await session.start(request("long", 3900), Deadline.after(None))
                assert session.transport_kind == "link"
                assert (await call.read()) is not None
                os.kill(pid, signal.SIGSTOP)  # alive to the kernel, silent to the router
                stopped_at = time.monotonic()
                try:
                    with pytest.raises(grpc.aio.AioRpcError) as failure:
                        async with asyncio.timeout(20):  # bounded: a hang fails the test
                            while await call.read() is not None:
                                pass
                    waited = time.monotonic() - stopped_at
                finally:
                    os.kill(pid, signal.SIGCONT)
                # The link was dropped: the worker aborts what ran on it; a new link serves on.
                tokens = await run_to_end(session, "after", 4)
                await session.close()
                return failure.value.code(), failure.value.details() or "", waited, tokens

        code, details, waited, tokens = asyncio.run(run())
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "keepalive" in details
        assert waited < 10.0
        assert tokens == 4
        wait_for_idle_pool(stub)


def test_a_link_that_cannot_be_opened_falls_back_to_grpc_session(model_dir, tmp_path):
    """A TLS front forwards the worker's gRPC port only: the router's TLS link to the worker's
    (plaintext) link port fails its handshake, and the request runs over gRPC Session instead."""
    cert = self_signed(tmp_path, "front")
    front = TlsFront(cert.cert, cert.key)
    with running_worker(model_dir, tmp_path) as worker:
        front.set_target(int(worker.info["port"]))
        tls = ClientTls(ca_file=cert.cert)

        async def run() -> tuple[str, int]:
            async with aio_channel(front.endpoint, (), tls) as channel:
                session = WorkerSession(worker_pb2_grpc.WorkerStub(channel), "w", link_host=HOST, tls=tls)
                tokens = await run_to_end(session, "fallback", 3)
                kind = session.transport_kind
                await session.close()
                return kind, tokens

        assert asyncio.run(run()) == ("grpc", 3)
        assert front.num_connections >= 1


def test_a_worker_serving_tls_is_reached_over_a_tls_link(model_dir, tmp_path):
    cert = self_signed(tmp_path, "worker")
    tls = ClientTls(ca_file=cert.cert)
    with running_worker(
        model_dir, tmp_path, "--tls-cert", str(cert.cert), "--tls-key", str(cert.key)
    ) as worker:

        async def run() -> tuple[str, int, int]:
            async with aio_channel(worker.address, (), tls) as channel:
                stub = worker_pb2_grpc.WorkerStub(channel)
                request = worker_pb2.GetWorkerInfoRequest()
                info = await stub.GetWorkerInfo(request, timeout=10)  # gRPC is over TLS too
                session = WorkerSession(stub, "w", link_host=HOST, tls=tls)
                tokens = await run_to_end(session, "over-tls", 5)
                kind = session.transport_kind
                await session.close()
                return kind, tokens, info.session_port

        kind, tokens, port = asyncio.run(run())
        assert (kind, tokens) == ("link", 5)
        with socket.create_connection((HOST, port), timeout=10) as plain:  # no plaintext link there
            plain.sendall(MAGIC)
            try:
                answer = plain.recv(len(MAGIC))
            except ConnectionResetError:
                answer = b""
            assert answer != MAGIC

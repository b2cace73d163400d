"""Admin authentication and TLS, and TLS to etcd: refused when they should be, working when not."""

from __future__ import annotations

import contextlib

import grpc
import pytest
from certs import self_signed
from fakes import FakeWorker
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from harness import (
    TOKEN,
    InProcessCoordinator,
    coordinator_config,
    run,
    start_request,
    wait_for_rollout,
)

from epochserve.app.local.etcd_launcher import EtcdServer, EtcdTls, Timing
from epochserve.controlplane.admin.client import AdminClient
from epochserve.controlplane.store.client import EtcdStore
from epochserve.controlplane.store.etcd_config import EtcdConfig
from epochserve.errors import StoreUnavailableError
from epochserve.proto.v1 import admin_pb2 as pb
from epochserve.proto.v1 import admin_pb2_grpc as pb_grpc


async def _list_workers_code(address: str, metadata, credentials=None) -> grpc.StatusCode:
    channel = (
        grpc.aio.secure_channel(address, credentials) if credentials else grpc.aio.insecure_channel(address)
    )
    async with channel:
        stub = pb_grpc.AdminStub(channel)
        try:
            await stub.ListWorkers(pb.ListWorkersRequest(), metadata=metadata, timeout=5)
        except grpc.aio.AioRpcError as e:
            return e.code()
        return grpc.StatusCode.OK


async def _watch_code(address: str, metadata) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        call = pb_grpc.AdminStub(channel).WatchRollout(
            pb.WatchRolloutRequest(version=1), metadata=metadata, timeout=5
        )
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as e:
            return e.code()
        return grpc.StatusCode.OK


async def _reflected_services(channel: grpc.aio.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    call = stub.ServerReflectionInfo(
        iter([request]), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=5
    )
    async for reply in call:
        return sorted(s.name for s in reply.list_services_response.service)
    return []


def test_admin_refuses_calls_without_the_right_token(etcd):
    async def scenario():
        async with InProcessCoordinator(coordinator_config(etcd)) as coordinator:
            address = coordinator.address
            codes = {
                "none": await _list_workers_code(address, ()),
                "wrong": await _list_workers_code(
                    address, (("authorization", "Bearer not-the-token-at-all"),)
                ),
                "not bearer": await _list_workers_code(address, (("authorization", TOKEN),)),
                "right": await _list_workers_code(address, (("authorization", f"Bearer {TOKEN}"),)),
                "stream, wrong": await _watch_code(address, (("authorization", "Bearer nope"),)),
                "stream, right, unknown rollout": await _watch_code(
                    address, (("authorization", f"Bearer {TOKEN}"),)
                ),
            }
            async with grpc.aio.insecure_channel(address) as channel:  # probes need no token
                health = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                services = await _reflected_services(channel)
            return codes, health.status, services

    codes, health, services = run(scenario())
    assert services == [
        "epochserve.v1.Admin",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    assert codes == {
        "none": grpc.StatusCode.UNAUTHENTICATED,
        "wrong": grpc.StatusCode.UNAUTHENTICATED,
        "not bearer": grpc.StatusCode.UNAUTHENTICATED,
        "right": grpc.StatusCode.OK,
        "stream, wrong": grpc.StatusCode.UNAUTHENTICATED,
        "stream, right, unknown rollout": grpc.StatusCode.NOT_FOUND,
    }
    assert health == health_pb2.HealthCheckResponse.SERVING


def test_admin_over_tls_refuses_plaintext_and_forwards_between_replicas(etcd, tmp_path):
    certs = self_signed(tmp_path)
    tls = {"tls_cert_file": certs.cert, "tls_key_file": certs.key}

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            leader = InProcessCoordinator(coordinator_config(etcd, coordinator_id="c-tls-a", **tls))
            await stack.enter_async_context(leader)
            await leader.wait_leading()
            follower = InProcessCoordinator(coordinator_config(etcd, coordinator_id="c-tls-b", **tls))
            await stack.enter_async_context(follower)
            await stack.enter_async_context(FakeWorker(etcd, "w0"))
            bearer = (("authorization", f"Bearer {TOKEN}"),)
            plaintext = await _list_workers_code(follower.address, bearer)
            untrusted = await _list_workers_code(follower.address, bearer, grpc.ssl_channel_credentials())
            async with AdminClient(follower.address, TOKEN, ca_file=certs.cert) as admin:
                started = await admin.start_rollout(start_request(1), timeout=10)  # forwarded over TLS
            record = await wait_for_rollout(etcd, 1, "DONE")
            return plaintext, untrusted, started, record

    plaintext, untrusted, started, record = run(scenario())
    assert plaintext == untrusted == grpc.StatusCode.UNAVAILABLE
    assert started.phase == pb.ROLLOUT_PHASE_STAGING and record.updated_by == "c-tls-a"


def test_etcd_over_tls(tmp_path):
    certs = self_signed(tmp_path, "etcd")
    server = EtcdServer(
        tmp_path / "etcd", tls=EtcdTls(certs.cert, certs.key, certs.cert), timing=Timing.fast()
    )

    async def scenario():
        secure = EtcdStore(EtcdConfig((server.endpoint,), ca_file=certs.cert, request_timeout=2))
        plain = EtcdStore(EtcdConfig((server.endpoint,), request_timeout=2))
        try:
            await secure.put(b"/tls-test", b"over tls")
            value = (await secure.get(b"/tls-test")).value
            with pytest.raises(StoreUnavailableError):
                await plain.get(b"/tls-test")
            return value
        finally:
            await secure.close()
            await plain.close()

    with server:
        assert server.client_url.startswith("https://")
        assert run(scenario()) == b"over tls"

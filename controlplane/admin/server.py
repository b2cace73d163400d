"""The Admin gRPC server of a coordinator: AdminService behind the bearer-token interceptor, plus
grpc.health.v1 and reflection, over TLS when the config names a certificate (plaintext is then not
served at all)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from epochserve.controlplane.admin.auth import BearerTokenInterceptor
from epochserve.controlplane.admin.service import AdminService
from epochserve.controlplane.coordinator.process import Coordinator
from epochserve.net import EXCLUSIVE_PORT, bind_grpc
from epochserve.proto.v1 import admin_pb2, admin_pb2_grpc
from epochserve.tls import server_credentials

ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name


async def start_admin_server(coordinator: Coordinator) -> grpc.aio.Server:
    """Bind and start the server; PortInUseError when the port is taken, ConfigError when the
    address cannot be bound otherwise."""
    config = coordinator.config
    server = grpc.aio.server(interceptors=[BearerTokenInterceptor(config.token)], options=[EXCLUSIVE_PORT])
    admin_pb2_grpc.add_AdminServicer_to_server(AdminService(coordinator), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((ADMIN_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    credentials = None
    if config.tls_cert_file is not None and config.tls_key_file is not None:
        credentials = server_credentials(config.tls_cert_file, config.tls_key_file)
    bind_grpc(server, config.admin_host, config.admin_port, credentials)
    await server.start()
    for service in ("", ADMIN_SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server

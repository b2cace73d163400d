"""The Admin gRPC service of the coordinator (proto/v1/admin.proto): server, auth, client."""

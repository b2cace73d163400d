"""Worker: the paged-attention engine and the internal Worker gRPC service."""

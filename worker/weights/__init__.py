"""Weights of a live worker: manifests and checksums, staging a new version, the in-place swap."""

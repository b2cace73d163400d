"""SIGTERM to a worker that is part of a cluster (real etcd): it deregisters first, then lets the
requests in flight finish within --drain-seconds. Deregistering closes its control-plane
participant; the engine loop must keep stepping without it (the rollout agent's hook runs between
steps and used to ask the closed participant for directives, which failed every request instead
of draining it)."""

import signal
import threading

import grpc
from fixtures.models import build_tiny_model
from fixtures.processes import running_worker

from epochserve.proto.v1 import common_pb2, worker_pb2_grpc

NEW_TOKENS = 800  # seconds of decoding on CPU: the SIGTERM lands in the middle


def test_sigterm_drains_the_requests_in_flight_of_a_registered_worker(tmp_path, etcd):
    model_dir = build_tiny_model("llama", tmp_path / "model", max_position_embeddings=1024)
    control = (f"--etcd-endpoints={etcd.server.endpoint}", f"--cluster={etcd.cluster}")
    with running_worker(model_dir, tmp_path, *control, "--drain-seconds", "60", name="registered") as worker:
        with grpc.insecure_channel(worker.address) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            request = common_pb2.GenerateRequest(
                request_id="in-flight",
                prompt_token_ids=[5, 6, 7, 8],
                sampling=common_pb2.SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True, temperature=1.0),
            )
            stream = stub.Generate(request, timeout=120)
            first = next(stream)  # decoding has started
            assert first.HasField("chunk")
            exit_code: list[int] = []
            stopper = threading.Thread(target=lambda: exit_code.append(worker.stop(signal.SIGTERM, 90)))
            stopper.start()
            rest = list(stream)
            stopper.join(100)
        log = worker.log()
    finish = rest[-1].finish
    assert finish.finish_reason == common_pb2.FINISH_REASON_LENGTH, (finish, log[-3000:])
    tokens = len(first.chunk.token_ids) + sum(len(r.chunk.token_ids) for r in rest if r.HasField("chunk"))
    assert tokens == NEW_TOKENS
    assert exit_code == [0]
    assert "engine step failed" not in log, log[-3000:]

"""`epochctl verify --replay-routing`: transformers' Qwen3-MoE and Qwen2-MoE recompute with the experts
the engine returned forced at every MoE layer and position, and then agree with the engine's logprobs;
forcing other experts changes them, so the replay is really applied."""

import json
from dataclasses import replace

import pytest
import torch
from fixtures.engine import hf_model, make_engine, make_request

from epochserve.app.cli.main import main
from epochserve.app.verify.audit import ResponseRecord, read_audit_log
from epochserve.app.verify.check import verify
from epochserve.app.verify.recompute import Recomputer
from epochserve.app.verify.replay import ReplayError, forced_routing, moe_routers
from epochserve.proto.convert import sampling_to_proto
from epochserve.proto.results import ResponseAssembler
from epochserve.proto.v1 import common_pb2
from epochserve.router.audit import AuditLog, audit_record
from epochserve.worker.serving.responses import ResponseBuilder, WorkerStamp

PROMPT = [7, 300, 41, 5, 99, 123, 250, 18, 64, 2, 77]
MAX_TOKENS = 6
NUM_EXPERTS = 8  # fixtures/models.py TINY_MOE
MOE_KINDS = ("qwen3_moe", "qwen2_moe")  # renormalized top-k with a dense layer; raw top-k, shared expert


def engine_audit_log(model_dir, path) -> ResponseRecord:
    """One n=2 request sampled by the engine with its routed experts, through the wire into a router's
    audit log at `path`; returns it as verify reads it."""
    engine = make_engine(model_dir, block_size=4, num_kv_blocks=64)
    params = dict(temperature=1.0, top_p=0.9, seed=3, max_tokens=MAX_TOKENS, ignore_eos=True)
    request = make_request(
        "r", PROMPT, engine.limits, n=2, return_routed_experts=True, return_support_size=True, **params
    )
    engine.add_request(request)
    builder, assembler = ResponseBuilder(WorkerStamp("w0", 1, "torch")), ResponseAssembler()
    while engine.has_work():
        for message in builder.responses(engine.step()):
            assembler.add(message)
    forwarded = common_pb2.GenerateRequest(
        request_id="r", prompt_token_ids=PROMPT, sampling=sampling_to_proto(request.sampling), n=2
    )
    log = AuditLog(path)
    log.write(audit_record(forwarded, 0, assembler.samples(), "router-0"))
    log.close()
    [record] = read_audit_log(path)
    return record


def shifted(rows, by: int = 1):
    """Every expert id moved to the next expert: a different set in every layer and position."""
    return tuple(tuple((e + by) % NUM_EXPERTS for e in row) for row in rows)


@pytest.fixture(scope="module", params=MOE_KINDS)
def sampled(request, tiny_moe_dirs, tmp_path_factory):
    model_dir = tiny_moe_dirs[request.param]
    audit = tmp_path_factory.mktemp(request.param) / "audit.jsonl"
    return model_dir, engine_audit_log(model_dir, audit), audit


def test_replayed_routing_recomputes_the_engines_logprobs(sampled):
    model_dir, record, _ = sampled
    report = verify([record], Recomputer({0: model_dir}), replay=True)
    assert report.replayed is not None and report.replayed.num_tokens == 2 * MAX_TOKENS
    assert report.replayed.max_abs_delta < 1e-4
    assert set(report.replayed_by_version) == {0}
    assert report.to_dict()["replayed"]["num_tokens"] == 2 * MAX_TOKENS
    assert report.overall.num_tokens == 2 * MAX_TOKENS  # free routing still reported beside it


def test_forcing_other_experts_changes_the_logprobs(sampled):
    model_dir, record, _ = sampled
    wrong = tuple(
        replace(
            s,
            routed_experts=shifted(s.routed_experts),
            prompt_routed_experts=shifted(s.prompt_routed_experts),
        )
        for s in record.samples
    )
    report = verify([replace(record, samples=wrong)], Recomputer({0: model_dir}), replay=True)
    assert report.replayed is not None and report.replayed.max_abs_delta > 1e-2
    # free routing ignores the returned ids: only the replay moved
    assert report.overall.max_abs_delta < 1e-4


@pytest.mark.parametrize("kind", MOE_KINDS)
def test_forcing_the_models_own_choice_is_its_free_forward(tiny_moe_dirs, kind):
    """The forced experts get the weights the router itself gives them (norm_topk_prob honoured:
    Qwen3-MoE renormalizes, Qwen2-MoE does not), so forcing its own top-k changes no bit."""
    model = hf_model(tiny_moe_dirs[kind])
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        free = model(ids, output_router_logits=True)
        hooks_before = [dict(r._forward_hooks) for r in moe_routers(model)]  # transformers' own
        own = torch.stack(
            [torch.softmax(r.float(), -1).topk(2, dim=-1).indices for r in free.router_logits], 1
        )
        with forced_routing(model, own):
            forced = model(ids).logits
        with forced_routing(model, (own + 1) % NUM_EXPERTS):
            other = model(ids).logits
        after = model(ids).logits
    assert torch.equal(forced, free.logits)
    assert not torch.allclose(other, free.logits, atol=1e-3)
    assert torch.equal(after, free.logits)
    assert [dict(r._forward_hooks) for r in moe_routers(model)] == hooks_before


def test_routing_that_does_not_fit_is_refused(sampled):
    model_dir, record, _ = sampled
    model = hf_model(model_dir)
    ids = torch.zeros(len(PROMPT), 2, 2, dtype=torch.long)
    for bad, message in [
        (ids[:, :1], "MoE layers"),
        (ids[:, :, :1], "experts per layer"),
        (ids + NUM_EXPERTS, "outside"),
    ]:
        with pytest.raises(ReplayError, match=message), forced_routing(model, bad):
            pass
    with pytest.raises(ReplayError, match="positions"), forced_routing(model, ids[:-1]), torch.no_grad():
        model(torch.tensor([PROMPT]))
    no_prompt_routing = replace(record, samples=(replace(record.samples[0], prompt_routed_experts=()),))
    with pytest.raises(ReplayError, match=r"request r.*covers"):
        verify([no_prompt_routing], Recomputer({0: model_dir}), replay=True)


def test_the_cli_gates_on_the_replayed_recompute(sampled, capsys):
    model_dir, _, audit = sampled
    args = ["verify", "--audit-log", str(audit), "--model", str(model_dir), "--no-admin", "--json"]
    assert main([*args, "--replay-routing", "--max-abs-delta", "1e-4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["replayed"]["max_abs_delta"] < 1e-4
    assert report["overall"]["num_tokens"] == report["replayed"]["num_tokens"] == 2 * MAX_TOKENS

    # an audit log whose routing was planted wrong passes free routing and fails the replay
    raw = json.loads(audit.read_text())
    for sample in raw["samples"]:
        sample["routed_experts"] = [list(row) for row in shifted(sample["routed_experts"])]
        sample["prompt_routed_experts"] = [list(row) for row in shifted(sample["prompt_routed_experts"])]
    planted = audit.with_name("planted.jsonl")
    planted.write_text(json.dumps(raw) + "\n")
    planted_args = [*args[:2], str(planted), *args[3:]]
    assert main([*planted_args, "--max-abs-delta", "1e-4"]) == 0
    capsys.readouterr()
    assert main([*planted_args, "--replay-routing", "--max-abs-delta", "1e-4"]) == 1
    assert json.loads(capsys.readouterr().out)["replayed"]["max_abs_delta"] > 1e-2

"""`epochctl verify`'s routing agreement: a MoE engine's routed experts, carried through the wire, the
client's results and a router's audit log, agree with transformers' router; a planted swap shows."""

from dataclasses import replace

from fixtures.engine import make_engine, make_request

from epochserve.app.verify.audit import read_audit_log
from epochserve.app.verify.check import verify
from epochserve.app.verify.recompute import Recomputer
from epochserve.proto.convert import sampling_to_proto
from epochserve.proto.results import ResponseAssembler
from epochserve.proto.v1 import common_pb2
from epochserve.router.audit import AuditLog, audit_record
from epochserve.worker.serving.responses import ResponseBuilder, WorkerStamp

PROMPT = [7, 300, 41, 5, 99, 123, 250, 18, 64, 2, 77]
MAX_TOKENS = 5


def audited_routing(model_dir, path):
    """One n=2 request with routed experts, from the engine through the wire into an audit log."""
    engine = make_engine(model_dir, block_size=4, num_kv_blocks=64)
    request = make_request(
        "v", PROMPT, engine.limits, n=2, temperature=1.0, seed=5, max_tokens=MAX_TOKENS,
        ignore_eos=True, return_routed_experts=True,
    )  # fmt: skip
    engine.add_request(request)
    builder, assembler = ResponseBuilder(WorkerStamp("w0", 1, "torch")), ResponseAssembler()
    while engine.has_work():
        for message in builder.responses(engine.step()):
            assembler.add(message)
    forwarded = common_pb2.GenerateRequest(
        request_id="v", prompt_token_ids=PROMPT, sampling=sampling_to_proto(request.sampling), n=2
    )
    log = AuditLog(path)
    log.write(audit_record(forwarded, 0, assembler.samples(), "router-0"))
    log.close()
    return list(read_audit_log(path))


def test_verify_reports_full_routing_agreement_and_a_planted_swap(tiny_moe_dirs, tmp_path):
    model_dir = tiny_moe_dirs["qwen3_moe"]  # 2 MoE layers around a dense one, top-2
    [record] = audited_routing(model_dir, tmp_path / "audit.jsonl")
    sample = record.samples[0]
    assert sample.routed_top_k == 2 and len(sample.prompt_routed_experts) == len(PROMPT)
    assert len(sample.routed_experts) == MAX_TOKENS and len(sample.routed_experts[0]) == 4

    recomputer = Recomputer({0: model_dir})
    report = verify([record], recomputer)
    routing = report.routing
    assert routing is not None and routing.num_mismatches == 0
    # every input position once (prompt, then each token's but the first), per MoE layer, per sample
    assert routing.num_pairs == 2 * (len(PROMPT) + MAX_TOKENS - 1) * 2
    assert routing.agreement_rate >= 0.99 and report.to_dict()["routing"]["num_pairs"] == routing.num_pairs

    # The second layer of the third token, its two experts swapped: the order of the ids matters.
    rows = [list(row) for row in sample.routed_experts]
    rows[2][2:4] = rows[2][3:1:-1]
    planted = replace(sample, routed_experts=tuple(tuple(row) for row in rows))
    alone = verify([replace(record, samples=(sample,))], recomputer).routing
    bad = verify([replace(record, samples=(planted,))], recomputer).routing
    assert alone is not None and bad is not None and bad.num_pairs == alone.num_pairs
    assert bad.num_agree == alone.num_agree - 1 and bad.num_mismatches == alone.num_mismatches + 1

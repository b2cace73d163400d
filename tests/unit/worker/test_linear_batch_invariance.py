"""TorchOps' batch-invariant products on CPU: a row's result is the same bytes whatever else is in the
product — any number of rows, at any place among them. Checked on the machine that runs the tests,
since it is MKL's kernel choice on that CPU that the row slices pin down."""

import pytest
import torch

from epochserve.errors import ConfigError
from epochserve.worker.config import EngineConfig
from epochserve.worker.engine.model_setup import select_ops
from epochserve.worker.layers.ops import CPU_INVARIANT_ROWS, TorchOps

# (out_features, in_features): SmolLM2's projections (qkv, gate-up, down) and a tiny model's.
SHAPES = [(960, 576), (3072, 576), (576, 1536), (256, 64)]
# Row counts across MKL's kernel switches (1, 2-15, >= 16, 57-128 on the machine measured) and
# across slice boundaries.
NUM_ROWS = [1, 2, 3, 7, 8, 15, 16, 17, 31, 33, 57, 64, 100]


@pytest.mark.parametrize(("out_features", "in_features"), SHAPES)
def test_a_row_is_the_same_bytes_in_any_product(out_features, in_features):
    generator = torch.Generator().manual_seed(out_features + in_features)
    weight = torch.randn(out_features, in_features, generator=generator) * 0.05
    bias = torch.randn(out_features, generator=generator)
    row = torch.randn(1, in_features, generator=generator)
    ops = TorchOps(batch_invariant=True)
    alone = ops.linear(row, weight, bias)
    for num_rows in NUM_ROWS:
        for place in sorted({0, num_rows // 2, num_rows - 1}):
            x = torch.randn(num_rows, in_features, generator=generator)
            x[place] = row[0]
            together = ops.linear(x, weight, bias)
            assert together.shape == (num_rows, out_features)
            assert torch.equal(together[place], alone[0]), (num_rows, place)
    # The slices compute the product itself, not an approximation of it.
    x = torch.randn(2 * CPU_INVARIANT_ROWS + 3, in_features, generator=generator)
    expected = (x.double() @ weight.double().T + bias.double()).float()
    torch.testing.assert_close(ops.linear(x, weight, bias), expected, rtol=1e-5, atol=1e-5)


def test_batch_invariant_runs_on_cpu_torch_and_refuses_cuda_torch(tmp_path):
    cpu = select_ops(EngineConfig(model_dir=tmp_path, batch_invariant=True))
    assert isinstance(cpu, TorchOps) and cpu.batch_invariant
    with pytest.raises(ConfigError, match="Triton"):
        select_ops(EngineConfig(model_dir=tmp_path, device="cuda", kernel_mode="torch", batch_invariant=True))


def test_the_worker_cli_takes_batch_invariant():
    # The Kubernetes operator starts workers with --batch-invariant when a cluster asks for it.
    from epochserve.app.cli.main import build_parser

    args = build_parser().parse_args(["worker", "--model", "smollm2", "--batch-invariant"])
    assert args.batch_invariant is True
    assert build_parser().parse_args(["worker", "--model", "smollm2"]).batch_invariant is False


def test_a_rows_sampling_statistics_are_the_same_bytes_in_any_batch():
    # Torch splits a lone row's reduction across threads but hands each thread whole rows of a table,
    # so without the per-row path a logsumexp (and the top-p softmax) moved by an ulp with the batch.
    from epochserve.worker.engine.sampler import filter_logits

    generator = torch.Generator().manual_seed(7)
    ops = TorchOps(batch_invariant=True)
    vocab = 49152
    top_k, top_p, min_p = torch.zeros(16, dtype=torch.int64), torch.full((16,), 0.95), torch.zeros(16)
    for trial in range(100):  # a 2-thread CPU moved ~4% of these lone rows' logsumexp by an ulp
        logits = torch.randn(16, vocab, generator=generator)
        logits[0, torch.rand(vocab, generator=generator) < 0.5] = float("-inf")
        alone = ops.softmax_stats(logits[:1])
        for num_rows in (2, 5, 16):
            together = ops.softmax_stats(logits[:num_rows])
            for alone_stat, together_stat in zip(alone, together, strict=True):
                assert torch.equal(together_stat[:1], alone_stat), (trial, num_rows)
        if trial % 5 == 0:  # the filter sorts, the slow half: a fifth of the trials
            alone_filtered = filter_logits(logits[:1], top_k[:1], top_p[:1], min_p[:1], batch_invariant=True)
            filtered = filter_logits(logits, top_k, top_p, min_p, batch_invariant=True)
            assert torch.equal(filtered[:1], alone_filtered), trial

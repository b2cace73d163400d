"""The batch sizes decode graphs are captured for (cuda_graphs.decode_buckets): pure arithmetic, so
checked here on any machine; the graphs themselves run in tests/gpu."""

from __future__ import annotations

import pytest

from epochserve.worker.config import EngineConfig
from epochserve.worker.engine.cuda_graphs import DEFAULT_BUCKETS, MAX_GRAPH_BATCH, decode_buckets


def test_step_32_at_256_sequences_is_the_historical_set() -> None:
    assert decode_buckets(256, 32) == DEFAULT_BUCKETS


@pytest.mark.parametrize("max_num_seqs", [1, 5, 64, 65, 100, 128, 200, 256, 300, 512])
@pytest.mark.parametrize("step", [8, 16, 32, 48])
def test_every_pass_fits_a_bucket_with_less_than_a_step_of_padding(max_num_seqs: int, step: int) -> None:
    buckets = decode_buckets(max_num_seqs, step)
    assert list(buckets) == sorted(set(buckets)) and buckets[0] == 1
    assert buckets[-1] == min(buckets[-1], MAX_GRAPH_BATCH)
    for rows in range(1, min(max_num_seqs, MAX_GRAPH_BATCH) + 1):  # what a pass can hold
        bucket = next(b for b in buckets if b >= rows)
        assert bucket - rows < (step if rows > 64 else rows)
    # nothing captured that no pass can use: the largest bucket is the first to hold max_num_seqs
    assert len([b for b in buckets if b >= min(max_num_seqs, MAX_GRAPH_BATCH)]) == 1


def test_a_bad_step_is_refused() -> None:
    with pytest.raises(ValueError, match="step"):
        decode_buckets(128, 0)
    with pytest.raises(ValueError, match="graph_bucket_step"):
        EngineConfig(model_dir=".", graph_bucket_step=0)

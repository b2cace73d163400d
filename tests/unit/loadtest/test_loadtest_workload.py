"""Workloads: length distributions (parsing, bounds, seeds), synthetic prompts, JSONL prompts."""

from __future__ import annotations

import json
import random
import statistics

import pytest

from epochserve.errors import ConfigError
from epochserve.loadtest.workload import (
    FIRST_SYNTHETIC_TOKEN_ID,
    JsonlWorkload,
    LengthDistribution,
    SyntheticWorkload,
)


def test_distributions_parse_and_draw_within_their_bounds():
    rng = random.Random(0)
    assert LengthDistribution.parse("64").sample(rng) == 64
    assert LengthDistribution.parse("fixed:8").describe() == "fixed:8"
    uniform = [LengthDistribution.parse("uniform:3,5").sample(rng) for _ in range(500)]
    assert set(uniform) == {3, 4, 5}  # both ends included
    normal = [LengthDistribution.parse("normal:100,10").sample(rng) for _ in range(2000)]
    assert statistics.mean(normal) == pytest.approx(100, abs=1.5)
    assert statistics.stdev(normal) == pytest.approx(10, abs=1.0)
    assert min(LengthDistribution.parse("normal:2,50").sample(rng) for _ in range(200)) == 1  # clipped


@pytest.mark.parametrize(
    "text", ["uniform:5", "uniform:9,3", "fixed:0", "normal:0,1", "gamma:1,2", "fixed:x"]
)
def test_bad_distributions_are_config_errors(text):
    with pytest.raises(ConfigError):
        LengthDistribution.parse(text)


def test_synthetic_workload_is_deterministic_for_a_seed_and_stays_in_the_vocabulary():
    def items(seed: int):
        w = SyntheticWorkload(
            LengthDistribution.parse("uniform:4,9"), LengthDistribution.parse("fixed:7"), 50, n=3, seed=seed
        )
        return [w.next_item() for _ in range(40)]

    first, again, other = items(1), items(1), items(2)
    assert first == again and first != other
    for item in first:
        assert 4 <= len(item.prompt) <= 9 and item.max_tokens == 7 and item.n == 3
        assert all(FIRST_SYNTHETIC_TOKEN_ID <= t < 50 for t in item.prompt)
    assert len({item.seed for item in first}) == 40


def test_jsonl_rows_cycle_in_order_with_their_own_settings(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": "The capital of France is", "max_tokens": 5, "group": 7},
        {"prompt_token_ids": [1, 2, 3], "n": 4},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    w = JsonlWorkload(path, LengthDistribution.parse("fixed:9"), n=2, seed=0)
    a, b, c = w.next_item(), w.next_item(), w.next_item()
    assert (a.prompt, a.max_tokens, a.n, a.group_id) == ("The capital of France is", 5, 2, "7")
    assert (b.prompt, b.max_tokens, b.n, b.group_id) == ((1, 2, 3), 9, 4, None)
    assert c.prompt == a.prompt and c.seed != a.seed


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ('{"prompt": ""}', "needs a non-empty"),
        ('{"prompt_token_ids": [1, -2]}', "non-negative"),
        ('{"prompt": "x", "max_tokens": 0}', "max_tokens"),
        ('{"prompt": "x", "n": 0}', "n must be"),
    ],
)
def test_bad_jsonl_lines_are_config_errors_naming_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(ConfigError, match=rf"bad.jsonl:2: .*{message}"):
        JsonlWorkload(path, LengthDistribution.parse("fixed:1"), n=1, seed=0)

"""Balancing policies: least outstanding tokens, prefix affinity with bounded load, round-robin."""

import collections
import random

import pytest

from epochserve.router.policies import POLICIES, Candidate, RouteRequest, estimate_cost, make_policy
from epochserve.router.policies.least_tokens import LeastTokensPolicy
from epochserve.router.policies.prefix_affinity import PrefixAffinityPolicy
from epochserve.router.policies.round_robin import RoundRobinPolicy


def route(prompt=(1, 2, 3), text="", n=1, cost=10):
    return RouteRequest("r", tuple(prompt), text, n, cost)


def workers(*loads):
    """Candidates w0, w1, ... with (tokens, seqs) loads."""
    return [Candidate(f"w{i}", tokens, seqs) for i, (tokens, seqs) in enumerate(loads)]


def test_make_policy_by_name():
    assert set(POLICIES) == {"least-tokens", "prefix-affinity", "round-robin"}
    assert isinstance(make_policy("least-tokens"), LeastTokensPolicy)
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("random")


def test_least_tokens_picks_the_lightest_worker_and_rotates_among_ties():
    policy = LeastTokensPolicy()
    assert policy.choose(route(), workers((500, 1), (20, 3), (90, 1))).worker_id == "w1"
    assert policy.choose(route(), workers((20, 2), (20, 1))).worker_id == "w1"  # seqs break token ties
    idle = workers((0, 0), (0, 0), (0, 0))
    assert {policy.choose(route(), idle).worker_id for _ in range(6)} == {"w0", "w1", "w2"}


def test_round_robin_cycles_whatever_the_load():
    policy = RoundRobinPolicy()
    picks = [policy.choose(route(), workers((0, 0), (999, 50), (0, 0))).worker_id for _ in range(6)]
    assert picks == ["w0", "w1", "w2", "w0", "w1", "w2"]


def test_estimated_cost_counts_the_prompt_once_and_caps_open_ended_outputs():
    assert estimate_cost(100, 8, n=4) == 100 + 4 * 8
    assert estimate_cost(100, None, n=1) == estimate_cost(100, 10**6, n=1) == 100 + 256


def test_prefix_affinity_sends_a_prompt_and_its_repeats_to_one_worker():
    policy = PrefixAffinityPolicy(prefix_tokens=8)
    idle = workers((0, 0), (0, 0), (0, 0), (0, 0))
    prompt = [5, 6, 7, 8, 9, 10, 11, 12]
    first = policy.choose(route(prompt), idle).worker_id
    assert {policy.choose(route(prompt), idle).worker_id for _ in range(10)} == {first}
    # Only the first prefix_tokens count: same head, other tail → same worker.
    assert policy.choose(route([*prompt, 99, 98]), idle).worker_id == first
    text = "Solve: 12 * 7 = ?"
    assert len({policy.choose(route((), text), idle).worker_id for _ in range(5)}) == 1


def test_prefix_affinity_spreads_different_prompts_over_the_workers():
    policy = PrefixAffinityPolicy()
    idle = workers((0, 0), (0, 0), (0, 0), (0, 0))
    rng = random.Random(0)
    counts = collections.Counter(
        policy.choose(route([rng.randrange(512) for _ in range(12)]), idle).worker_id for _ in range(400)
    )
    assert set(counts) == {"w0", "w1", "w2", "w3"}
    assert min(counts.values()) > 60  # 100 each on average


def test_prefix_affinity_keeps_its_choice_when_another_worker_leaves():
    policy = PrefixAffinityPolicy()
    everyone = workers((0, 0), (0, 0), (0, 0), (0, 0))
    rng = random.Random(1)
    for _ in range(50):
        request = route([rng.randrange(512) for _ in range(10)])
        chosen = policy.choose(request, everyone)
        fewer = [c for c in everyone if c.worker_id != ("w0" if chosen.worker_id != "w0" else "w1")]
        assert policy.choose(request, fewer) == chosen


def test_prefix_affinity_bounds_the_imbalance():
    policy = PrefixAffinityPolicy(load_factor=1.25, slack_seqs=4)
    request = route([1, 2, 3, 4], n=2)
    idle = workers((0, 0), (0, 0))
    preferred, other = (c.worker_id for c in policy.ranking(request, idle))
    loads = {preferred: (400, 5), other: (0, 0)}
    busy = [Candidate(w, *loads[w]) for w in ("w0", "w1")]
    # mean 2.5 → bound 1.25 * 2.5 + 4 = 7.1: 5 + 2 fits on the preferred worker.
    assert policy.choose(request, busy).worker_id == preferred
    loads = {preferred: (900, 12), other: (0, 0)}
    overloaded = [Candidate(w, *loads[w]) for w in ("w0", "w1")]
    assert policy.choose(request, overloaded).worker_id == other  # 12 + 2 > 1.25 * 6 + 4


def test_prefix_affinity_settings_are_checked():
    with pytest.raises(ValueError):
        PrefixAffinityPolicy(load_factor=0.9)
    with pytest.raises(ValueError):
        PrefixAffinityPolicy(prefix_tokens=0)

"""A verifiable task for the RL loop: small additions, rewarded when the first number answered is right."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    text: str
    answer: int


def make_problems(rng: random.Random, count: int) -> list[Problem]:
    problems = []
    for _ in range(count):
        a, b = rng.randrange(1, 20), rng.randrange(1, 20)
        problems.append(Problem(f"Question: what is {a} + {b}?\nAnswer:", a + b))
    return problems


def reward(problem: Problem, completion: str) -> float:
    """1.0 when the first integer of the completion is the sum, else 0.0."""
    match = re.search(r"-?\d+", completion)
    return 1.0 if match is not None and int(match.group()) == problem.answer else 0.0

"""Routing agreement: the experts a MoE engine returned (return_routed_experts) against the top-k of
the trainer's router (transformers, `output_router_logits=True`) at the same positions.

A trainer that replays the returned routing recomputes the engine's very network; one that routes
on its own recomputes another wherever the two disagree. The rate tells how far apart they are.
Where the trainer's router puts two of the k + 1 most likely experts within NEAR_TIE of each other,
either side's rounding decides the ranking: such disagreements are counted apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, astuple, dataclass

import numpy as np
import torch

NEAR_TIE = 1e-5  # router probabilities this close may rank either way under fp32 rounding


@dataclass(frozen=True, slots=True)
class RoutingStats:
    """Compared (position, MoE layer) pairs: a pair agrees when its top-k ids match in order."""

    num_pairs: int = 0
    num_agree: int = 0
    num_near_ties: int = 0  # disagreements where the trainer's router has a near-tie
    num_mismatches: int = 0  # disagreements without one

    @property
    def agreement_rate(self) -> float:
        return self.num_agree / self.num_pairs if self.num_pairs else 1.0

    def __add__(self, other: RoutingStats) -> RoutingStats:
        return RoutingStats(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def to_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "agreement_rate": self.agreement_rate}


def returned_by_position(
    num_prompt: int, prompt_rows: Sequence[Sequence[int]], token_rows: Sequence[Sequence[int]], top_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(positions, ids [positions, layers, top_k]): each input position's returned routing once.
    Prompt rows are positions 0.., token j's row is position num_prompt - 1 + j (the input that
    produced it), so the first token's duplicates the last prompt position's."""
    positions = list(range(len(prompt_rows)))
    rows = list(prompt_rows)
    for j, row in enumerate(token_rows):
        if num_prompt - 1 + j >= len(prompt_rows):
            positions.append(num_prompt - 1 + j)
            rows.append(row)
    ids = np.asarray(rows, dtype=np.int64).reshape(len(rows), -1, max(top_k, 1))
    return np.asarray(positions, dtype=np.int64), ids


def routing_agreement(returned: np.ndarray, probs: torch.Tensor) -> RoutingStats:
    """returned: [n, layers, k] ids by descending weight; probs: the trainer's router probabilities
    [n, layers, experts] at the same positions."""
    top_k = returned.shape[-1]
    values, ids = torch.topk(probs.float(), top_k + 1, dim=-1)
    near_tie = ((values[..., :-1] - values[..., 1:]) < NEAR_TIE).any(dim=-1)
    differ = (torch.from_numpy(returned) != ids[..., :top_k].cpu()).any(dim=-1)
    near_tie = near_tie.cpu()
    return RoutingStats(
        num_pairs=differ.numel(),
        num_agree=int((~differ).sum()),
        num_near_ties=int((differ & near_tie).sum()),
        num_mismatches=int((differ & ~near_tie).sum()),
    )

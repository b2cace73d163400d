"""Recompute processed logprobs with Hugging Face transformers under a named version's weights.

transformers runs the model (fp32, one version loaded at a time: the last one stays); the processing
is the trainer's reference, epochserve.sampling.reference: the engine's exact boundary rule, or the
engine's own support sizes where the response carries them. For responses of a mixture-of-experts
model that carry routed experts, the same forward also returns the router's probabilities
(`output_router_logits`), for the routing agreement (routing.py); and given the engine's routing, a
second forward forces it at every MoE layer and position (replay.py) and processes those logits alike.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from epochserve.app.verify.replay import forced_routing
from epochserve.sampling import SamplingParams
from epochserve.sampling.reference import rule_support_sizes, scaled_logits, token_logprobs

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Recomputed:
    """A trainer's recompute of one sample's tokens."""

    logprobs: list[float]  # with the engine's support sizes where given, else the rule's
    rule_logprobs: list[float]  # the rule alone applied to the trainer's logits
    boundary_positions: list[int]  # where the rule kept another number of tokens than the engine
    # with_router: the router's probabilities [prompt + tokens, moe layers, experts] at every position
    router_probs: torch.Tensor | None = None
    # given forced experts: the logprobs (as `logprobs`) of the forward with the engine's routing
    replayed_logprobs: list[float] | None = None


class Recomputer:
    """Loads each version's weights with transformers on demand; `version_dirs` maps version → dir."""

    def __init__(self, version_dirs: dict[int, Path], device: str = "cpu") -> None:
        self.version_dirs = version_dirs
        self.device = device
        self._loaded: tuple[int, Any] | None = None

    def model(self, version: int) -> Any:
        if self._loaded is not None and self._loaded[0] == version:
            return self._loaded[1]
        if version not in self.version_dirs:
            raise KeyError(f"no weights known for policy version {version}")
        from transformers import AutoModelForCausalLM

        logger.info("loading policy version %d from %s", version, self.version_dirs[version])
        self._loaded = None  # release the previous version first
        model: Any = AutoModelForCausalLM.from_pretrained(self.version_dirs[version], dtype=torch.float32)
        model = model.to(self.device)
        self._loaded = (version, model.eval())
        return self._loaded[1]

    @torch.no_grad()
    def recompute(
        self,
        version: int,
        prompt: Sequence[int],
        tokens: Sequence[int],
        params: SamplingParams,
        support_sizes: Sequence[int] = (),
        with_router: bool = False,
        forced_experts: np.ndarray | None = None,
    ) -> Recomputed:
        """The processed logprob of each of `tokens` after `prompt`, under `version`'s weights.
        support_sizes: the engine's, one per token, or empty when the response has none.
        with_router: also the router's probabilities at every position (a MoE model).
        forced_experts: the engine's routing of every input position that produced a token
        [len(prompt) + len(tokens) - 1, moe layers, top_k]; also recompute with it replayed.
        Raises replay.ReplayError when that routing does not fit the model."""
        if not tokens and not with_router:
            return Recomputed([], [], [])
        if support_sizes and len(support_sizes) != len(tokens):
            raise ValueError(f"{len(support_sizes)} support sizes for {len(tokens)} tokens")
        model = self.model(version)
        ids = torch.tensor([list(prompt) + list(tokens)], device=self.device)
        out = model(ids, output_router_logits=True) if with_router else model(ids)
        router = _router_probs(out.router_logits) if with_router else None
        if not tokens:
            return Recomputed([], [], [], router)
        exact, rule, boundary = self._processed(out.logits, len(prompt), tokens, params, support_sizes)
        replayed = None
        if forced_experts is not None:
            with forced_routing(model, forced_experts):
                # the last token is no model input of any sampled token: its routing never came back
                replay_logits = model(ids[:, :-1]).logits
            replayed = self._processed(replay_logits, len(prompt), tokens, params, support_sizes)[0]
        return Recomputed(exact, rule, boundary, router, replayed)

    def _processed(
        self,
        all_logits: torch.Tensor,
        num_prompt: int,
        tokens: Sequence[int],
        params: SamplingParams,
        support_sizes: Sequence[int],
    ) -> tuple[list[float], list[float], list[int]]:
        """(logprobs, rule logprobs, boundary positions) of `tokens` from a forward's logits."""
        logits = all_logits[0, num_prompt - 1 : num_prompt - 1 + len(tokens)].float()
        token_ids = torch.tensor(list(tokens), device=self.device)
        rule_sizes = rule_support_sizes(scaled_logits(logits, params), params)
        rule = token_logprobs(logits, token_ids, params, rule_sizes).tolist()
        if not support_sizes:
            return rule, rule, []
        engine_sizes = torch.tensor(list(support_sizes), device=self.device)
        exact = token_logprobs(logits, token_ids, params, engine_sizes).tolist()
        boundary = (rule_sizes != engine_sizes).nonzero()[:, 0].tolist()
        return exact, rule, boundary


def _router_probs(router_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """transformers' per-MoE-layer router logits [positions, experts] → probabilities
    [positions, moe layers, experts] (softmax in fp32, as both the engine and transformers route)."""
    return torch.stack([torch.softmax(logits.float(), dim=-1) for logits in router_logits], dim=1)

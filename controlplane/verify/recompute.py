"""Recompute processed logprobs with Hugging Face transformers under a named version's weights.

The processing is the engine's contract (README "What logprobs mean"): temperature (1 for greedy),
then top-k, top-p, min-p with transformers' own warpers, then an fp32 log-softmax. Models load in
fp32, one version at a time (the last one stays loaded).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from epochserve.sampling import SamplingParams

logger = logging.getLogger(__name__)


def processors(params: SamplingParams) -> Any:
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    chain = LogitsProcessorList([TemperatureLogitsWarper(1.0 if params.is_greedy else params.temperature)])
    if params.top_k:
        chain.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1.0:
        chain.append(TopPLogitsWarper(params.top_p))
    if params.min_p > 0.0:
        chain.append(MinPLogitsWarper(params.min_p))
    return chain


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
    def processed_logprobs(
        self, version: int, prompt: Sequence[int], tokens: Sequence[int], params: SamplingParams
    ) -> list[float]:
        """The processed logprob of each of `tokens` after `prompt`, under `version`'s weights."""
        if not tokens:
            return []
        model = self.model(version)
        ids = torch.tensor([list(prompt) + list(tokens)], device=self.device)
        logits = model(ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(tokens)].float()
        logprobs = torch.log_softmax(processors(params)(None, logits), dim=-1)
        picked = logprobs[
            torch.arange(len(tokens), device=self.device), torch.tensor(list(tokens), device=self.device)
        ]
        return [float(x) for x in picked.cpu()]

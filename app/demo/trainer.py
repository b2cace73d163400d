"""Trainer: the RL loop's copy of the policy (transformers, fp32), its logprobs and optimizer step.

The logprobs it recomputes are the ones a PPO/GRPO trainer would use for the importance ratio: an
fp32 log-softmax of the full distribution (the loop samples at temperature 1 without filters, so
the engine's processed distribution is exactly this one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True, slots=True)
class Rollout:
    """One sampled completion and what the loop learned about it."""

    prompt_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    sampler_logprobs: tuple[float, ...]
    advantage: float


class Trainer:
    def __init__(self, model_dir: Path, device: str = "cpu", lr: float = 1e-5) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.model = model.to(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.device = device
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids)))

    def _token_logprobs(self, prompt: Sequence[int], tokens: Sequence[int]) -> torch.Tensor:
        ids = torch.tensor([list(prompt) + list(tokens)], device=self.device)
        logits = self.model(ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(tokens)].float()
        picked = torch.log_softmax(logits, dim=-1)[torch.arange(len(tokens)), torch.tensor(list(tokens))]
        return picked

    @torch.no_grad()
    def logprobs(self, prompt: Sequence[int], tokens: Sequence[int]) -> list[float]:
        self.model.eval()
        return [float(x) for x in self._token_logprobs(prompt, tokens)]

    def step(self, rollouts: Sequence[Rollout]) -> float:
        """One policy-gradient step (GRPO-style advantages, token-averaged); returns the loss."""
        self.model.train()
        self.optimizer.zero_grad()
        num_tokens = sum(len(r.token_ids) for r in rollouts) or 1
        total = 0.0
        for r in rollouts:
            if not r.token_ids or r.advantage == 0.0:
                continue
            loss = -r.advantage * self._token_logprobs(r.prompt_ids, r.token_ids).sum() / num_tokens
            loss.backward()
            total += loss.item()
        self.optimizer.step()
        self.model.eval()
        return total

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: t.detach() for name, t in self.model.state_dict().items()}

"""/v1/models' response body. The generation routes build their bodies as plain dicts in the hot
path (shapes.py, completions.py, chat.py: one object per response, none per token), in OpenAI's
shapes with the RL extensions (docs/http.md): `policy_version` on every object and chunk,
`token_ids` on every choice, `prompt_token_ids` on the response (in a stream: its first chunk),
`raw_logprobs` and `routed_experts` / `prompt_routed_experts` when asked; and vLLM's
`prompt_logprobs` on a completion's choices and on a chat completion (scoring.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "epochserve"
    max_model_len: int | None = None
    policy_version: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

"""Request bodies of the SGLang-compatible routes (POST /generate, POST /update_weights_from_disk),
in SGLang's documented field names; docs/http.md says which are honoured. Unknown fields are
ignored; fields whose meaning this server cannot honour are refused (sglang_generate.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SglSamplingParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    max_new_tokens: int | None = 128  # SGLang's default; 0: score the prompt, generate nothing
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # -1 (SGLang's "off") is 0 here
    min_p: float | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    n: int | None = None
    sampling_seed: int | None = None
    # Refused unless neutral:
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    min_new_tokens: int | None = None
    json_schema: str | None = None
    regex: str | None = None
    ebnf: str | None = None


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: SglSamplingParams = Field(default_factory=SglSamplingParams)
    return_logprob: bool = False
    logprob_start_len: int = -1  # with return_logprob: input logprobs from this prompt position; -1: none
    return_text_in_logprobs: bool = False  # each logprob entry's third element: the token's text
    top_logprobs_num: int = 0
    stream: bool = False
    # RL extensions, as on the OpenAI routes (docs/http.md)
    min_policy_version: int | None = None
    return_raw_logprobs: bool = False
    return_routed_experts: bool = False  # MoE models: meta_info's routed_experts, prompt_routed_experts
    output_mode: Literal["stream", "final"] | None = None
    timeout: float | None = Field(default=None, gt=0)


class UpdateWeightsBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model_path: str  # a published checkpoint (with its manifest) every worker can read
    drain: Literal["finish", "abort", "overlap"] | None = None  # ours; default from abort_all_requests
    drain_deadline: float | None = None  # ours, seconds after the commit: v-1 requests still running end
    abort_all_requests: bool = False  # SGLang's: true means drain "abort"
    version: int | None = None  # ours; else weight_version, else the committed version + 1
    weight_version: str | None = None  # SGLang's label: here a policy version (digits)
    timeout: float | None = Field(default=None, gt=0)  # seconds to wait for DONE

"""ModelConfig: the architecture facts the engine needs, read from a Hugging Face config.json.

Mixture-of-experts models (Qwen2-MoE, Qwen3-MoE) carry a MoeConfig besides: which layers are sparse,
how many experts, how they are routed.

Reads both the transformers 4 layout (rope_theta + rope_scaling) and the transformers 5 layout
(rope_parameters), so checkpoints saved by either load the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epochserve.errors import ConfigError

# architecture name in config.json → (qkv projections carry a bias, q/k RMSNorm per head)
SUPPORTED_ARCHITECTURES: dict[str, tuple[bool, bool]] = {
    "LlamaForCausalLM": (False, False),
    "MistralForCausalLM": (False, False),
    "Qwen2ForCausalLM": (True, False),
    "Qwen3ForCausalLM": (False, True),
    "Qwen2MoeForCausalLM": (True, False),
    "Qwen3MoeForCausalLM": (False, True),
}
MOE_ARCHITECTURES = ("Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM")


@dataclass(frozen=True, slots=True)
class RopeConfig:
    theta: float
    rope_type: str  # "default", "linear" or "llama3"
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position_embeddings: int = 8192  # llama3 only


@dataclass(frozen=True, slots=True)
class MoeConfig:
    num_experts: int
    top_k: int  # experts per token
    intermediate_size: int  # each routed expert's MLP width
    norm_topk_prob: bool  # renormalize the top-k probabilities to sum to 1
    sparse_layers: tuple[int, ...]  # layers with a MoE block; the others have a dense MLP
    shared_expert_intermediate_size: int = 0  # Qwen2-MoE's sigmoid-gated shared expert (0: none)

    def is_sparse(self, layer: int) -> bool:
        return layer in self.sparse_layers


@dataclass(frozen=True, slots=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: RopeConfig
    tie_word_embeddings: bool
    qkv_bias: bool
    qk_norm: bool
    eos_token_ids: tuple[int, ...]
    torch_dtype: str  # dtype the checkpoint was saved in, e.g. "bfloat16"
    moe: MoeConfig | None = None  # None: a dense model

    @classmethod
    def from_dir(cls, model_dir: Path) -> ModelConfig:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise ConfigError(f"{model_dir} has no config.json: not a Hugging Face model directory")
        return cls.from_dict(json.loads(path.read_text()), path.parent)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], model_dir: Path | None = None) -> ModelConfig:
        architecture = (raw.get("architectures") or ["?"])[0]
        if architecture not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(
                f"architecture {architecture!r} is not supported; "
                f"supported: {sorted(SUPPORTED_ARCHITECTURES)}"
            )
        default_bias, qk_norm = SUPPORTED_ARCHITECTURES[architecture]
        num_heads = int(raw["num_attention_heads"])
        hidden_size = int(raw["hidden_size"])
        return cls(
            architecture=architecture,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden_size,
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
            head_dim=int(raw.get("head_dim") or hidden_size // num_heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
            rope=_parse_rope(raw),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            # Qwen2-MoE's config names the bias `qkv_bias`
            qkv_bias=bool(raw.get("attention_bias", raw.get("qkv_bias", default_bias))),
            qk_norm=qk_norm,
            eos_token_ids=_eos_token_ids(raw, model_dir),
            torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
            moe=_parse_moe(raw) if architecture in MOE_ARCHITECTURES else None,
        )


def _parse_moe(raw: dict[str, Any]) -> MoeConfig:
    """Hugging Face's rule: layer i is sparse unless listed in mlp_only_layers, when experts exist
    and (i + 1) is a multiple of decoder_sparse_step."""
    # transformers 5 saves num_experts under its alias num_local_experts
    num_experts = int(raw.get("num_experts") or raw.get("num_local_experts") or 0)
    step = int(raw.get("decoder_sparse_step", 1))
    dense_only = {int(i) for i in raw.get("mlp_only_layers") or []}
    sparse = tuple(
        i
        for i in range(int(raw["num_hidden_layers"]))
        if i not in dense_only and num_experts > 0 and (i + 1) % step == 0
    )
    if raw.get("use_sliding_window"):
        raise ConfigError("sliding-window attention is not supported")
    return MoeConfig(
        num_experts=num_experts,
        top_k=int(raw["num_experts_per_tok"]),
        intermediate_size=int(raw["moe_intermediate_size"]),
        norm_topk_prob=bool(raw.get("norm_topk_prob", False)),
        sparse_layers=sparse,
        shared_expert_intermediate_size=int(raw.get("shared_expert_intermediate_size") or 0),
    )


def _parse_rope(raw: dict[str, Any]) -> RopeConfig:
    params = dict(raw.get("rope_parameters") or {})
    scaling = raw.get("rope_scaling") or {}
    params = {**scaling, **params}
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    rope_type = str(params.get("rope_type", params.get("type", "default")))
    if rope_type == "default":
        return RopeConfig(theta=theta, rope_type="default")
    if rope_type == "linear":
        return RopeConfig(theta=theta, rope_type="linear", factor=float(params["factor"]))
    if rope_type == "llama3":
        return RopeConfig(
            theta=theta,
            rope_type="llama3",
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
    raise ConfigError(f"rope type {rope_type!r} is not supported (default, linear, llama3)")


def _eos_token_ids(raw: dict[str, Any], model_dir: Path | None) -> tuple[int, ...]:
    """EOS ids from config.json and, where present, generation_config.json (which may list several)."""
    ids: list[int] = []
    sources = [raw]
    if model_dir is not None and (model_dir / "generation_config.json").is_file():
        sources.append(json.loads((model_dir / "generation_config.json").read_text()))
    for source in sources:
        value = source.get("eos_token_id")
        for token in value if isinstance(value, list) else [value]:
            if token is not None and int(token) not in ids:
                ids.append(int(token))
    return tuple(ids)

"""Llama-family decoder (Llama 2/3, Mistral, Qwen2 with qkv bias, Qwen3 with q/k RMSNorm), and its
mixture-of-experts variants (Qwen2-MoE, Qwen3-MoE: some or all MLPs are a SparseMoeBlock).

Reads like the architecture: embed → N × (norm, attention, residual, norm, gated MLP, residual) →
norm → lm_head. Tensor parallelism lives in the layers (worker/layers), not here.
The math order matches Hugging Face's modeling code so fp32 outputs agree to rounding.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, Protocol, cast

import torch
from torch import nn

from epochserve.kernels.rotary import QKNorm, rope_cos_sin_cache, rope_inv_freq
from epochserve.worker.layers.attention import AttentionMetadata, LayerKVCache, PagedAttention
from epochserve.worker.layers.context import LayerContext
from epochserve.worker.layers.linear import RowParallelLinear, column_linear, copy_checked, qkv_linear
from epochserve.worker.layers.moe import SparseMoeBlock, expert_param
from epochserve.worker.layers.vocab import LMHead, VocabEmbedding
from epochserve.worker.layers.weight_source import WeightSource
from epochserve.worker.models.config import ModelConfig

# which part of a merged parameter a checkpoint tensor fills: a q/k/v or gate/up shard, or
# (expert, part) of a layer's stacked experts
ShardId = str | int | tuple[int, int] | None


class Loadable(Protocol):
    """A module that fills its parameters from checkpoint tensors (see worker/layers/linear.py)."""

    def load(self, param_name: str, source: WeightSource, shard_id: ShardId, out: torch.Tensor) -> None: ...


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, ctx: LayerContext) -> None:
        super().__init__()
        self.eps = eps
        self.ops = ctx.ops
        self.weight = nn.Parameter(torch.ones(size, dtype=ctx.dtype), requires_grad=False)

    def load(self, param_name: str, source: WeightSource, shard_id: None, out: torch.Tensor) -> None:
        copy_checked(out, source.read(), "weight")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.rms_norm(x, self.weight, self.eps)

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual), fused where the kernels allow."""
        return self.ops.add_rms_norm(x, residual, self.weight, self.eps)


class Rotary(nn.Module):
    """The RoPE table, shared by every layer; PagedAttention applies it as it stores the keys."""

    cos_sin: torch.Tensor  # [max_positions, head_dim] fp32 buffer

    def __init__(self, config: ModelConfig, max_positions: int, ctx: LayerContext) -> None:
        super().__init__()
        rope = config.rope
        inv_freq = rope_inv_freq(
            config.head_dim,
            rope.theta,
            rope.rope_type,
            rope.factor,
            rope.low_freq_factor,
            rope.high_freq_factor,
            rope.original_max_position_embeddings,
        )
        self.register_buffer("cos_sin", rope_cos_sin_cache(inv_freq, max_positions), persistent=False)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, rotary: Rotary, ctx: LayerContext) -> None:
        super().__init__()
        d = config.head_dim
        self.qkv_proj = qkv_linear(
            config.hidden_size, d, config.num_heads, config.num_kv_heads, config.qkv_bias, ctx
        )
        self.num_heads = self.qkv_proj.shards["q"].size // d
        self.num_kv_heads = self.qkv_proj.shards["k"].size // d
        self.o_proj = RowParallelLinear(config.num_heads * d, config.hidden_size, False, ctx)
        self.q_norm = RMSNorm(d, config.rms_norm_eps, ctx) if config.qk_norm else None
        self.k_norm = RMSNorm(d, config.rms_norm_eps, ctx) if config.qk_norm else None
        self.rotary = rotary
        self.attn = PagedAttention(self.num_heads, self.num_kv_heads, d, ctx.ops)
        self.head_dim = d

    def attend(
        self, qkv: torch.Tensor, positions: torch.Tensor, cache: LayerKVCache, meta: AttentionMetadata
    ) -> torch.Tensor:
        """The block's output from the qkv projection's output (DecoderLayer computes that together
        with the norm before it)."""
        n, d = qkv.shape[0], self.head_dim
        q, k, v = qkv.split([self.num_heads * d, self.num_kv_heads * d, self.num_kv_heads * d], -1)
        q, k, v = (
            q.view(n, self.num_heads, d),
            k.view(n, self.num_kv_heads, d),
            v.view(n, self.num_kv_heads, d),
        )
        qk_norm = None
        if self.q_norm is not None and self.k_norm is not None:  # applied inside rotary_store_kv
            qk_norm = QKNorm(self.q_norm.weight, self.k_norm.weight, self.q_norm.eps)
        out = self.attn(q, k, v, positions, self.rotary.cos_sin, cache, meta, qk_norm)
        return self.o_proj(out.reshape(n, self.num_heads * d))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, ctx: LayerContext) -> None:
        super().__init__()
        self.gate_up_proj = column_linear(config.hidden_size, [config.intermediate_size] * 2, False, ctx)
        self.down_proj = RowParallelLinear(
            config.intermediate_size, config.hidden_size, False, ctx, silu_and_mul_first=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate_up_proj(x))  # silu(gate) * up, then down


class DecoderLayer(nn.Module):
    """Pre-norm block. It takes and returns (delta, residual): the residual stream is carried
    separately so each "residual + delta, then norm" is one fused step; the sums round to the model
    dtype exactly where Hugging Face's `x = x + f(norm(x))` does."""

    def __init__(self, config: ModelConfig, index: int, rotary: Rotary, ctx: LayerContext) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ctx)
        self.self_attn = Attention(config, rotary, ctx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ctx)
        self.ops = ctx.ops
        moe = config.moe
        self.mlp: MLP | SparseMoeBlock
        if moe is None or not moe.is_sparse(index):
            self.mlp = MLP(config, ctx)
        else:
            self.mlp = SparseMoeBlock(
                config.hidden_size,
                moe.num_experts,
                moe.top_k,
                moe.intermediate_size,
                moe.norm_topk_prob,
                moe.shared_expert_intermediate_size,
                ctx,
            )

    def forward(
        self,
        delta: torch.Tensor,
        residual: torch.Tensor | None,
        positions: torch.Tensor,
        cache: LayerKVCache,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Each norm and the projection after it go through one op, so that a batch-1 step can run
        # them as one kernel (ops.norm_then_linear); residual None: `delta` is the embedding itself.
        qkv_proj, norm = self.self_attn.qkv_proj, self.input_layernorm
        qkv, residual, _ = self.ops.norm_then_linear(
            delta, residual, norm.weight, norm.eps, qkv_proj.weight, qkv_proj.bias
        )
        h = self.self_attn.attend(qkv, positions, cache, meta)
        norm = self.post_attention_layernorm
        if isinstance(self.mlp, SparseMoeBlock):
            moe = self.mlp
            weights, ids, residual, h = self.ops.norm_then_route(
                h, residual, norm.weight, norm.eps, moe.gate.weight, moe.top_k, moe.renormalize
            )
            return moe.from_routing(h, weights, ids), residual
        h, residual = norm.add_and_norm(h, residual)
        return self.mlp(h), residual


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig, max_positions: int, ctx: LayerContext) -> None:
        super().__init__()
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size, ctx, ctx.dtype)
        rotary = Rotary(config, max_positions, ctx)
        self.layers = nn.ModuleList(DecoderLayer(config, i, rotary, ctx) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, ctx)


class LlamaForCausalLM(nn.Module):
    """forward() maps a flat batch of tokens to final hidden states; compute_logits() to fp32 logits."""

    # checkpoint name fragment → (our merged module, shard id)
    STACKED_PARAMS: ClassVar[dict[str, tuple[str, str | int]]] = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(
        self,
        config: ModelConfig,
        ctx: LayerContext,
        max_positions: int,
        head_table_dtype: torch.dtype = torch.float32,
        fp32_logits: bool = True,
    ) -> None:
        super().__init__()
        self.config = config
        self.model = Decoder(config, max_positions, ctx)
        self.lm_head = LMHead(config.vocab_size, config.hidden_size, ctx, head_table_dtype, fp32_logits)
        # in layer order; a tuple, not a ModuleList: they are registered under their layers already
        self.moe_blocks = tuple(m for m in self.model.modules() if isinstance(m, SparseMoeBlock))

    def forward(
        self,
        input_ids: torch.Tensor,  # [num_tokens]
        positions: torch.Tensor,  # [num_tokens]
        caches: list[LayerKVCache],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        delta, residual = self.model.embed_tokens(input_ids), None
        for layer, cache in zip(self.model.layers, caches, strict=True):
            delta, residual = layer(delta, residual, positions, cache, meta)
        assert residual is not None, "a model has at least one layer"
        return self.model.norm.add_and_norm(delta, residual)[0]

    @property
    def num_kv_heads_per_rank(self) -> int:
        attention = cast(Attention, self.model.layers[0].self_attn)
        return attention.num_kv_heads

    def last_topk_ids(self) -> list[torch.Tensor] | None:
        """Each MoE layer's expert ids [num_tokens, top_k] from the last forward (inside a CUDA graph
        capture: the graph's own outputs, which each replay rewrites), in layer order; None for a
        dense model or before any forward."""
        ids = [block.last_topk_ids for block in self.moe_blocks]
        if not ids or any(i is None for i in ids):
            return None
        return cast(list[torch.Tensor], ids)

    def last_routed_experts(self) -> torch.Tensor | None:
        """The last forward's expert ids, [num_tokens, num_moe_layers, top_k] in layer order, each
        token's ids by descending routing weight; None for a dense model."""
        ids = self.last_topk_ids()
        return None if ids is None else torch.stack(ids, dim=1)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[n, hidden] → [n, vocab], fp32 by default (see LMHead)."""
        return self.lm_head(hidden)

    def load_weights(
        self, weights: Iterable[tuple[str, WeightSource]], targets: dict[str, torch.Tensor] | None = None
    ) -> set[str]:
        """Load checkpoint tensors by their Hugging Face names; returns the names consumed.

        Writes into the live parameters, or into `targets` (parameter name → a tensor shaped like
        that parameter: a staging buffer) when given. Raises AttributeError for a name this model
        has no place for. With tied embeddings the embedding table also fills the lm_head.
        """
        loaded: set[str] = set()
        for name, source in weights:
            module_path, param_name = name.rsplit(".", 1)
            shard_id: ShardId = None
            leaf = module_path.rsplit(".", 1)[-1]
            expert = expert_param(module_path)
            if expert is not None:  # one expert's tensor, into its layer's stacked experts
                module_path, param_name, shard_id = expert
            elif leaf in self.STACKED_PARAMS:
                merged, shard_id = self.STACKED_PARAMS[leaf]
                module_path = f"{module_path.rsplit('.', 1)[0]}.{merged}"
            self._load_one(module_path, param_name, source, shard_id, targets)
            if name == "model.embed_tokens.weight" and self.config.tie_word_embeddings:
                self._load_one("lm_head", "weight", source, None, targets)
            loaded.add(name)
        return loaded

    def _load_one(
        self,
        module_path: str,
        param_name: str,
        source: WeightSource,
        shard_id: ShardId,
        targets: dict[str, torch.Tensor] | None,
    ) -> None:
        module = self.get_submodule(module_path)
        name = f"{module_path}.{param_name}"
        out = targets[name] if targets is not None else getattr(module, param_name).data
        cast(Loadable, module).load(param_name, source, shard_id, out)


def checkpoint_names(config: ModelConfig) -> set[str]:
    """Every tensor name a complete Hugging Face checkpoint of this model holds."""
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not config.tie_word_embeddings:
        names.add("lm_head.weight")
    for i in range(config.num_layers):
        prefix = f"model.layers.{i}"
        names |= {f"{prefix}.input_layernorm.weight", f"{prefix}.post_attention_layernorm.weight"}
        names |= {f"{prefix}.self_attn.{p}_proj.weight" for p in "qkvo"}
        names |= _mlp_names(config, i)
        if config.qkv_bias:
            names |= {f"{prefix}.self_attn.{p}_proj.bias" for p in "qkv"}
        if config.qk_norm:
            names |= {f"{prefix}.self_attn.{p}_norm.weight" for p in "qk"}
    return names


def _mlp_names(config: ModelConfig, layer: int) -> set[str]:
    prefix = f"model.layers.{layer}.mlp"
    moe = config.moe
    if moe is None or not moe.is_sparse(layer):
        return {f"{prefix}.{p}_proj.weight" for p in ("gate", "up", "down")}
    names = {f"{prefix}.gate.weight"}
    for e in range(moe.num_experts):
        names |= {f"{prefix}.experts.{e}.{p}_proj.weight" for p in ("gate", "up", "down")}
    if moe.shared_expert_intermediate_size:
        names |= {f"{prefix}.shared_expert.{p}_proj.weight" for p in ("gate", "up", "down")}
        names.add(f"{prefix}.shared_expert_gate.weight")
    return names

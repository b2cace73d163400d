"""Build one rank's share of the model and its KV pool, the same way on rank 0 and on followers.

The KV pool is sized per rank from that rank's memory budget; all ranks then agree on the smallest
block count (every rank must hold every block id rank 0 hands out).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from epochserve.errors import ConfigError
from epochserve.worker.config import EngineConfig
from epochserve.worker.engine.cuda_graphs import DecodeGraphs, decode_buckets
from epochserve.worker.engine.kv_cache import KVCachePool, cuda_kv_budget_bytes, num_blocks_for_budget
from epochserve.worker.engine.model_runner import ModelRunner
from epochserve.worker.layers.context import LayerContext
from epochserve.worker.layers.ops import TORCH_OPS, TorchOps, TritonOps
from epochserve.worker.layers.parallel import TensorParallel
from epochserve.worker.models.config import ModelConfig
from epochserve.worker.models.llama import LlamaForCausalLM
from epochserve.worker.models.loader import build_model, checkpoint_dtype, load_checkpoint
from epochserve.worker.tp.commands import CommandChannel
from epochserve.worker.weights.manifest import DTYPE_NAMES
from epochserve.worker.weights.updater import RankWeightUpdater

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class RankSetup:
    model_config: ModelConfig
    model: LlamaForCausalLM
    kv_pool: KVCachePool
    num_blocks: int  # blocks the block manager hands out; block `num_blocks` is the scratch block
    max_model_len: int  # the model's limit, capped by what the KV pool can hold for one sequence

    def make_runner(
        self, config: EngineConfig, tp: TensorParallel, channel: CommandChannel | None = None
    ) -> ModelRunner:
        """This rank's ModelRunner (`channel`: rank 0's, to its followers); on CUDA with graphs
        enabled, its decode graphs are captured now (every rank captures in the same order, so their
        collectives pair up)."""
        runner = ModelRunner(self.model, self.kv_pool, config.torch_device, channel, tp)
        if config.torch_device.type == "cuda" and config.cuda_graphs:
            runner.graphs = DecodeGraphs(
                self.model,
                self.kv_pool,
                self.max_model_len,
                scratch_block=self.num_blocks,
                # BlockManager: at most this many hold blocks (an overlap's two versions, each with
                # max_num_seqs slots, and the one being admitted)
                num_table_rows=2 * config.max_num_seqs + 1,
                buckets=decode_buckets(config.max_num_seqs, config.graph_bucket_step),
            )
            runner.graphs.capture()
        return runner

    def make_updater(self, config: EngineConfig, tp: TensorParallel) -> RankWeightUpdater:
        """This rank's side of weight updates, over its shard of the model."""
        return RankWeightUpdater(self.model, tp, prefer_device=config.stage_on_device)


def select_ops(config: EngineConfig) -> TorchOps:
    """The kernels a rank uses: PyTorch on CPU or when asked (kernel_mode="torch"), else Triton on CUDA."""
    # kernel_mode="triton" on CPU runs the kernels in Triton's interpreter (TRITON_INTERPRET=1): slow,
    # fp32 only, but it tests the GPU path's integration on any machine.
    on_cuda = config.torch_device.type == "cuda"
    use_triton = config.kernel_mode == "triton" or (config.kernel_mode == "auto" and on_cuda)
    if not use_triton:
        if not config.batch_invariant:
            return TORCH_OPS
        if on_cuda:  # torch's CUDA kernels (cuBLAS, SDPA) choose their reduction order by shape
            raise ConfigError("batch_invariant on CUDA needs the Triton kernels (kernel_mode auto or triton)")
        return TorchOps(batch_invariant=True)
    # EPOCHSERVE_GEMV=0 keeps 1-row projections on cuBLAS (benchmarks compare the two).
    use_gemv = os.environ.get("EPOCHSERVE_GEMV", "1") == "1"
    # EPOCHSERVE_NORM_GEMV=0 keeps each norm in a launch of its own before the 1-row projection
    # after it (and an MoE router's top-k after its product): benchmarks compare (ops.py).
    norm_into_gemv = os.environ.get("EPOCHSERVE_NORM_GEMV", "1") == "1"
    return TritonOps(batch_invariant=config.batch_invariant, use_gemv=use_gemv, norm_into_gemv=norm_into_gemv)


def head_table_dtype(config: EngineConfig, model_config: ModelConfig, dtype: torch.dtype) -> torch.dtype:
    """The dtype the lm_head's table is stored in (its arithmetic is fp32 either way, see
    layers/vocab.py): the model's dtype when the checkpoint's table has it (or there is no
    checkpoint), fp32 when the checkpoint keeps the table at a precision the model's dtype lacks."""
    if config.lm_head_dtype == "model" or dtype == torch.float32 or config.load_format == "random":
        return dtype
    name = "model.embed_tokens.weight" if model_config.tie_word_embeddings else "lm_head.weight"
    stored = checkpoint_dtype(config.model_dir, name)
    return dtype if stored == DTYPE_NAMES.get(dtype) else torch.float32


def check_head_split(config: ModelConfig, tp_size: int) -> None:
    """Refuse at start, with the reason, a TP size the model's heads cannot be split over."""
    if config.num_heads % tp_size:
        raise ConfigError(f"{config.num_heads} attention heads cannot be split over TP size {tp_size}")
    if config.num_kv_heads % tp_size and tp_size % config.num_kv_heads:
        raise ConfigError(
            f"{config.num_kv_heads} key/value heads cannot be split over (or replicated to) TP size {tp_size}"
        )
    if config.intermediate_size % tp_size:
        raise ConfigError(f"MLP width {config.intermediate_size} is not divisible by TP size {tp_size}")


def setup_rank(config: EngineConfig, tp: TensorParallel) -> RankSetup:
    model_config = ModelConfig.from_dir(config.model_dir)
    check_head_split(model_config, tp.size)
    device, dtype = config.torch_device, config.torch_dtype
    if device.type == "cuda" and device.index is not None:  # graphs, Triton and NCCL use the current device
        torch.cuda.set_device(device)
    max_positions = config.max_model_len or model_config.max_position_embeddings
    ctx = LayerContext(tp=tp, dtype=dtype, ops=select_ops(config))
    fp32_logits = config.lm_head_dtype == "float32"
    table_dtype = head_table_dtype(config, model_config, dtype)
    model = build_model(model_config, ctx, device, max_positions, table_dtype, fp32_logits)
    if config.load_format == "random":
        fill_random(model, seed=1234 + tp.rank)
    else:
        load_checkpoint(model, config.model_dir)
    kv_heads = model.num_kv_heads_per_rank
    num_blocks = tp.min_over_ranks(_plan_num_blocks(config, model_config, kv_heads))
    # One block more than the block manager hands out: the scratch block padding rows write to.
    kv_pool = KVCachePool(
        model_config.num_layers,
        num_blocks + 1,
        config.block_size,
        kv_heads,
        model_config.head_dim,
        dtype,
        device,
    )
    max_model_len = min(max_positions, num_blocks * config.block_size)
    return RankSetup(model_config, model, kv_pool, num_blocks, max_model_len)


@torch.no_grad()
def fill_random(model: LlamaForCausalLM, seed: int, std: float = 0.02) -> None:
    """Benchmarks without a checkpoint: N(0, std) weights, norms at 1 (only config.json is read)."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        else:
            param.normal_(0.0, std, generator=generator)


def _plan_num_blocks(config: EngineConfig, model_config: ModelConfig, kv_heads: int) -> int:
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    if config.torch_device.type == "cuda":
        budget = cuda_kv_budget_bytes(config.torch_device, config.kv_cache_memory_fraction)
    else:
        budget = config.kv_cache_bytes
    try:
        return num_blocks_for_budget(
            budget,
            model_config.num_layers,
            config.block_size,
            kv_heads,
            model_config.head_dim,
            config.torch_dtype,
        )
    except ConfigError as exc:
        raise ConfigError(f"{exc}; raise the KV budget") from exc

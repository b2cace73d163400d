"""Build a model and fill it from a Hugging Face directory of safetensors (single file or sharded).

Each rank reads only the slices it holds (safetensors get_slice), converting dtype on copy.
A checkpoint that lacks a tensor, has an unknown one, or a tensor of the wrong shape is refused
with ConfigError before the model is used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open

from epochserve.errors import ConfigError
from epochserve.worker.layers.context import LayerContext
from epochserve.worker.layers.weight_source import SafetensorsSource, WeightSource
from epochserve.worker.models.config import ModelConfig
from epochserve.worker.models.llama import LlamaForCausalLM, checkpoint_names

logger = logging.getLogger(__name__)


def safetensors_files(model_dir: Path) -> list[Path]:
    """The checkpoint files, in the order of the sharded index when there is one."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{model_dir} holds no .safetensors files")
    return files


def iter_checkpoint(model_dir: Path) -> Iterator[tuple[str, WeightSource]]:
    """Yield (name, lazy slice) for every tensor of the checkpoint; files stay open while iterating."""
    with ExitStack() as stack:
        for path in safetensors_files(model_dir):
            handle = stack.enter_context(safe_open(str(path), framework="pt"))
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, SafetensorsSource(handle.get_slice(name))


def checkpoint_dtype(model_dir: Path, name: str) -> str | None:
    """The safetensors dtype name (F32, BF16, ...) of tensor `name`, from the file headers alone."""
    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="pt") as handle:
            if name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                return str(handle.get_slice(name).get_dtype())
    return None


def build_model(
    config: ModelConfig,
    ctx: LayerContext,
    device: torch.device,
    max_positions: int,
    head_table_dtype: torch.dtype = torch.float32,
    fp32_logits: bool = True,
) -> LlamaForCausalLM:
    """An unloaded model with its parameters allocated on `device` (at their final addresses)."""
    check_moe_split(config, ctx.tp.size)
    with device:
        model = LlamaForCausalLM(config, ctx, max_positions, head_table_dtype, fp32_logits)
    return model.eval()


def check_moe_split(config: ModelConfig, tp_size: int) -> None:
    """Refuse at start a TP size the experts' MLP widths cannot be split over (each rank holds a
    slice of every expert)."""
    moe = config.moe
    if moe is None:
        return
    widths = {
        "expert MLP width": moe.intermediate_size,
        "shared expert width": moe.shared_expert_intermediate_size,
    }
    for what, width in widths.items():
        if width % tp_size:
            raise ConfigError(f"{what} {width} is not divisible by TP size {tp_size}")


def load_checkpoint(model: LlamaForCausalLM, model_dir: Path) -> None:
    """Fill every parameter from the checkpoint; raises ConfigError on any mismatch."""
    expected = checkpoint_names(model.config)
    seen: set[str] = set()
    try:
        with torch.no_grad():
            for name, source in iter_checkpoint(model_dir):
                if name not in expected:
                    raise ConfigError(
                        f"{model_dir}: unexpected tensor {name!r} for {model.config.architecture}"
                    )
                model.load_weights([(name, source)])
                seen.add(name)
    except (ValueError, AttributeError) as exc:
        raise ConfigError(f"{model_dir}: {exc}") from exc
    missing = sorted(expected - seen)
    if missing:
        raise ConfigError(f"{model_dir}: checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
    logger.info("loaded %d tensors from %s (tp rank %d)", len(seen), model_dir, model.lm_head.tp.rank)

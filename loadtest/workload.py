"""What the load generator sends: work items from a JSONL file of prompts, or synthetic ones.

A `Workload` hands out `WorkItem`s one at a time (`next_item`), forever: a file is cycled in order,
a synthetic workload draws each item from its length distributions. Both are deterministic for a
given seed, so two runs with the same flags send the same requests in the same order.

JSONL format, one request per line (all keys but the prompt optional):
    {"prompt": "text the worker tokenizes"}  or  {"prompt_token_ids": [1, 17, 33]}
    "max_tokens": int     (else the --output-len distribution)
    "n": int              (else --n)
    "group": str          (a user-defined group: requests expected to share one policy version)
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from epochserve.errors import ConfigError

DistributionKind = Literal["fixed", "uniform", "normal"]
# Synthetic prompts draw ids from [FIRST_SYNTHETIC_TOKEN_ID, vocab_size): the lowest ids of most
# tokenizers are special tokens (pad, bos, eos, unk), which would make prompts end early or oddly.
FIRST_SYNTHETIC_TOKEN_ID = 10


@dataclass(frozen=True, slots=True)
class LengthDistribution:
    """A distribution of token counts, parsed from `fixed:N`, `uniform:LO,HI` or `normal:MEAN,STD`.

    Draws are integers >= 1: uniform is inclusive of both ends, normal is rounded and clipped at 1.
    """

    kind: DistributionKind
    a: float  # fixed: N; uniform: LO; normal: MEAN
    b: float = 0.0  # uniform: HI; normal: STD; fixed: unused

    def __post_init__(self) -> None:
        if self.kind == "fixed" and self.a < 1:
            raise ConfigError(f"fixed length must be >= 1, got {self.a:g}")
        if self.kind == "uniform" and not 1 <= self.a <= self.b:
            raise ConfigError(f"uniform lengths need 1 <= LO <= HI, got {self.a:g},{self.b:g}")
        if self.kind == "normal" and (self.a < 1 or self.b < 0):
            raise ConfigError(f"normal lengths need MEAN >= 1 and STD >= 0, got {self.a:g},{self.b:g}")

    @classmethod
    def parse(cls, text: str) -> LengthDistribution:
        """`fixed:64`, `uniform:16,128`, `normal:256,32`; a bare integer means fixed."""
        kind, _, params = text.partition(":")
        if not params:
            kind, params = "fixed", kind
        try:
            values = [float(p) for p in params.split(",")]
        except ValueError:
            raise ConfigError(f"bad length distribution {text!r}: parameters must be numbers") from None
        arity = {"fixed": 1, "uniform": 2, "normal": 2}
        if kind not in arity or len(values) != arity[kind]:
            raise ConfigError(
                f"bad length distribution {text!r}: use fixed:N, uniform:LO,HI or normal:MEAN,STD"
            )
        return cls(kind, *values)  # type: ignore[arg-type]

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return int(self.a)
        if self.kind == "uniform":
            return rng.randint(int(self.a), int(self.b))
        return max(1, round(rng.gauss(self.a, self.b)))

    def describe(self) -> str:
        return f"{self.kind}:{self.a:g}" + ("" if self.kind == "fixed" else f",{self.b:g}")


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One request to send: created by a Workload, consumed by the load driver."""

    prompt: tuple[int, ...] | str  # token ids, or text the worker tokenizes
    max_tokens: int
    n: int  # samples of the prompt (one group)
    seed: int  # sampling seed, so a rerun of the workload replays the same tokens
    group_id: str | None = None  # user-defined group across requests (JSONL "group")


class Workload(Protocol):
    def next_item(self) -> WorkItem: ...

    def describe(self) -> str: ...


class SyntheticWorkload:
    """Random prompts of `input_len` tokens asking for `output_len` tokens each."""

    def __init__(
        self,
        input_len: LengthDistribution,
        output_len: LengthDistribution,
        vocab_size: int,
        n: int,
        seed: int,
    ) -> None:
        if vocab_size <= FIRST_SYNTHETIC_TOKEN_ID:
            raise ConfigError(f"vocab size must be above {FIRST_SYNTHETIC_TOKEN_ID}, got {vocab_size}")
        self.input_len = input_len
        self.output_len = output_len
        self.vocab_size = vocab_size
        self.n = n
        self._rng = random.Random(seed)

    def next_item(self) -> WorkItem:
        rng = self._rng
        length = self.input_len.sample(rng)
        prompt = tuple(rng.randrange(FIRST_SYNTHETIC_TOKEN_ID, self.vocab_size) for _ in range(length))
        return WorkItem(prompt, self.output_len.sample(rng), self.n, rng.randrange(2**63))

    def describe(self) -> str:
        return (
            f"synthetic: input {self.input_len.describe()}, output {self.output_len.describe()}, "
            f"vocab {self.vocab_size}, n={self.n}"
        )


class JsonlWorkload:
    """The prompts of a JSONL file, cycled in file order (module docstring for the format)."""

    def __init__(self, path: Path, output_len: LengthDistribution, n: int, seed: int) -> None:
        self.path = path
        self.output_len = output_len
        self._rng = random.Random(seed)
        self._rows = [_parse_row(path, number, line, n) for number, line in _lines(path)]
        if not self._rows:
            raise ConfigError(f"{path} holds no prompts")
        self._next = 0

    def next_item(self) -> WorkItem:
        prompt, max_tokens, n, group = self._rows[self._next % len(self._rows)]
        self._next += 1
        tokens = max_tokens if max_tokens is not None else self.output_len.sample(self._rng)
        return WorkItem(prompt, tokens, n, self._rng.randrange(2**63), group)

    def describe(self) -> str:
        return f"{self.path} ({len(self._rows)} prompts, cycled)"


_Row = tuple[tuple[int, ...] | str, int | None, int, str | None]


def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the workload {path}: {exc}") from None
    return [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]


def _parse_row(path: Path, number: int, line: str, default_n: int) -> _Row:
    """One JSONL line → (prompt, max_tokens or None, n, group); ConfigError naming the line."""
    where = f"{path}:{number}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: expected an object")
    if isinstance(row.get("prompt"), str) and row["prompt"]:
        prompt: tuple[int, ...] | str = row["prompt"]
    elif isinstance(row.get("prompt_token_ids"), list) and row["prompt_token_ids"]:
        ids = row["prompt_token_ids"]
        if not all(isinstance(t, int) and t >= 0 for t in ids):
            raise ConfigError(f"{where}: prompt_token_ids must be non-negative integers")
        prompt = tuple(ids)
    else:
        raise ConfigError(f"{where}: needs a non-empty 'prompt' (text) or 'prompt_token_ids' (list)")
    max_tokens, n = row.get("max_tokens"), row.get("n", default_n)
    if max_tokens is not None and not (isinstance(max_tokens, int) and max_tokens >= 1):
        raise ConfigError(f"{where}: max_tokens must be an integer >= 1")
    if not (isinstance(n, int) and n >= 1):
        raise ConfigError(f"{where}: n must be an integer >= 1")
    group = row.get("group")
    return prompt, max_tokens, n, None if group is None else str(group)

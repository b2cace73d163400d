"""JSON encoding of records, with a schema version and strict validation.

Every value is a JSON object `{"schema": 2, "kind": "<kind>", <every field of the record>}`; a field
that is itself a record-like dataclass (DrainReport) is a nested object of its fields.
Decoding is all-or-nothing: bad JSON, another kind, an unknown schema, a missing, unknown or
mistyped field, or a record that fails its own validation raises `SchemaError` naming the key, and
no part of the value is used. A schema change that adds, removes or retypes a field bumps
SCHEMA_VERSION; a reader refuses versions it does not know rather than guess.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from typing import Any, TypeVar

from epochserve.controlplane.store.records import (
    CandidateRecord,
    EpochRecord,
    Record,
    RolloutRecord,
    RouterRecord,
    WorkerRecord,
)
from epochserve.errors import SchemaError

SCHEMA_VERSION = 2  # 2: drain=overlap (drain_deadline, retiring_version, last_drain)
KIND_NAMES: dict[type, str] = {
    EpochRecord: "epoch",
    RolloutRecord: "rollout",
    WorkerRecord: "worker",
    RouterRecord: "router",
    CandidateRecord: "candidate",
}
R = TypeVar("R", bound=Record)


def encode(record: Record) -> bytes:
    """The JSON value of a record (compact, keys sorted, so equal records give equal bytes)."""
    body: dict[str, Any] = {"schema": SCHEMA_VERSION, "kind": KIND_NAMES[type(record)]}
    body.update(_fields(record))
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _fields(record: Any) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, tuple):
            value = list(value)
        elif dataclasses.is_dataclass(value):
            value = _fields(value)
        body[f.name] = value
    return body


def decode(cls: type[R], raw: bytes, key: str) -> R:
    """Parse the value stored at `key` as a `cls`; raises SchemaError (see module docstring)."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SchemaError(key, f"not JSON ({e})") from None
    if not isinstance(body, dict):
        raise SchemaError(key, "not a JSON object")
    schema = body.pop("schema", None)
    if schema != SCHEMA_VERSION:
        raise SchemaError(key, f"schema {schema!r} is not the schema this build reads ({SCHEMA_VERSION})")
    kind = body.pop("kind", None)
    if kind != KIND_NAMES[cls]:
        raise SchemaError(key, f"kind {kind!r} where a {KIND_NAMES[cls]} record belongs")
    try:
        return _build(cls, body)
    except (TypeError, ValueError) as e:  # a field's type, or the record's own validation
        raise SchemaError(key, str(e)) from None


def _build(cls: Any, body: dict[str, Any]) -> Any:
    """A `cls` from its JSON fields: every field present, none unknown, each of its type."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    if missing := sorted(names - body.keys()):
        raise ValueError(f"missing fields {missing}")
    if unknown := sorted(body.keys() - names):
        raise ValueError(f"unknown fields {unknown}")
    values = {}
    for name in sorted(names):
        try:
            values[name] = _coerce(hints[name], body[name])
        except (TypeError, ValueError) as e:
            raise type(e)(f"field {name}: {e}") from None
    return cls(**values)


def _coerce(hint: Any, value: Any) -> Any:
    """Check one JSON value against a field's type hint; return it as the field's Python type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(inner, value)
    if origin is tuple:
        if not isinstance(value, list):
            raise TypeError(f"{value!r} is not a list")
        item = typing.get_args(hint)[0]
        return tuple(_coerce(item, v) for v in value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise TypeError(f"{value!r} is not an object")
        return _build(hint, value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)  # ValueError names the bad value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str) and type(value) is hint:
        return value
    raise TypeError(f"{value!r} is not a {getattr(hint, '__name__', hint)}")

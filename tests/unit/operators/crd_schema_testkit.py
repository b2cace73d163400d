"""The CRDs' openAPIV3Schema as the tests use it: loaded from the chart's crds/ (the one source),
defaulted and validated the way the API server does it, short of CEL rules."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[3]
CRD_DIR = REPO / "charts" / "epochserve" / "crds"
EXAMPLES_DIR = REPO / "charts" / "epochserve" / "examples"


@cache
def crds() -> dict[str, dict[str, Any]]:
    """Every CRD in crds/, by kind."""
    loaded = [yaml.safe_load(path.read_text()) for path in sorted(CRD_DIR.glob("*.yaml"))]
    return {crd["spec"]["names"]["kind"]: crd for crd in loaded}


def openapi_schema(kind: str) -> dict[str, Any]:
    """The storage version's openAPIV3Schema of a kind."""
    (version,) = [v for v in crds()[kind]["spec"]["versions"] if v["storage"]]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """A copy of `value` with the schema's defaults filled in, nested ones included (like the API
    server: a defaulted `{}` gets its own fields' defaults)."""
    value = copy.deepcopy(value)
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in set(value) - set(schema.get("properties", {})):
                value[name] = apply_defaults(extra, value[name])
    elif isinstance(value, list) and "items" in schema:
        value = [apply_defaults(schema["items"], item) for item in value]
    return value


def validator(kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        openapi_schema(kind), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def admit(obj: dict[str, Any]) -> dict[str, Any]:
    """What the API server would store for `obj`: defaulted, then validated (raises ValidationError)."""
    defaulted = apply_defaults(openapi_schema(obj["kind"]), obj)
    validator(obj["kind"]).validate(defaulted)
    return dict(defaulted)


def errors(obj: dict[str, Any]) -> list[str]:
    """Validation errors of the defaulted object, as messages ([] when admitted)."""
    defaulted = apply_defaults(openapi_schema(obj["kind"]), obj)
    return [e.message for e in validator(obj["kind"]).iter_errors(defaulted)]


def example(name: str) -> dict[str, Any]:
    """A CR from the chart's examples/ (no namespace/uid: the API server adds those)."""
    loaded: dict[str, Any] = yaml.safe_load((EXAMPLES_DIR / name).read_text())
    return loaded


def as_stored(obj: dict[str, Any], namespace: str = "epochserve", uid: str = "uid-1") -> dict[str, Any]:
    """Admit `obj` and add the metadata the API server sets on create."""
    stored = admit(obj)
    stored["metadata"] = {**stored["metadata"], "namespace": namespace, "uid": uid, "generation": 1}
    return stored

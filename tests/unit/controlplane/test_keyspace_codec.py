"""Key strings (keyspace.py) and the strict JSON codec (codec.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from epochserve.controlplane.store import codec
from epochserve.controlplane.store.keyspace import KeyKind, Keyspace
from epochserve.controlplane.store.records import (
    DrainPolicy,
    DrainReport,
    EpochRecord,
    RolloutPhase,
    RolloutRecord,
    RouterRecord,
    WorkerRecord,
    WorkerStatus,
)
from epochserve.errors import SchemaError

KS = Keyspace("prod")
ROLLOUT = RolloutRecord(
    12,
    "/ckpt/12",
    DrainPolicy.ABORT,
    RolloutPhase.COMMITTED,
    1.5,
    2.5,
    "c0",
    30.0,
    "sum",
    99.0,
    "",
    ("w9",),
    (),
)
WORKER = WorkerRecord("w0", "inc", "10.0.0.1:7100", 2, 64, WorkerStatus.READY, 11, "s11", "fp", 12, "s12")
OVERLAPPING = dataclasses.replace(  # mid drain=overlap: v11 served, v10 still retiring
    WORKER,
    retiring_version=10,
    last_drain=DrainReport(11, DrainPolicy.OVERLAP, 0.012, None, finished_previous=3, aborted_previous=1),
)
DEADLINED = dataclasses.replace(ROLLOUT, drain=DrainPolicy.OVERLAP, drain_deadline=20.0)


def test_keys_of_the_design_keyspace():
    assert KS.epoch() == b"/epochserve/prod/epoch"
    assert KS.rollout(12) == b"/epochserve/prod/rollouts/00000000000000000012"
    assert KS.worker("w0") == b"/epochserve/prod/workers/w0"
    assert KS.router("r0") == b"/epochserve/prod/routers/r0"
    assert KS.candidate(0xABC) == b"/epochserve/prod/election/coordinator/0000000000000abc"


def test_rollout_keys_sort_numerically():
    assert sorted([KS.rollout(10), KS.rollout(9), KS.rollout(100)]) == [
        KS.rollout(9),
        KS.rollout(10),
        KS.rollout(100),
    ]


@pytest.mark.parametrize(
    ("key", "parsed"),
    [
        (b"/epochserve/prod/epoch", (KeyKind.EPOCH, "")),
        (b"/epochserve/prod/rollouts/00000000000000000012", (KeyKind.ROLLOUT, "12")),
        (b"/epochserve/prod/workers/w0", (KeyKind.WORKER, "w0")),
        (b"/epochserve/prod/election/coordinator/0000000000000abc", (KeyKind.CANDIDATE, "0000000000000abc")),
        (b"/epochserve/prod/rollouts/12", None),  # not padded
        (b"/epochserve/prod/workers/a/b", None),
        (b"/epochserve/other/epoch", None),
        (b"/epochserve/prod/something-new", None),
    ],
)
def test_classify(key, parsed):
    assert KS.classify(key) == parsed


@pytest.mark.parametrize("bad", ["", "a/b", "-x", "x" * 129, "sp ace"])
def test_names_with_slashes_or_odd_characters_are_refused(bad):
    with pytest.raises(ValueError):
        KS.worker(bad)
    with pytest.raises(ValueError):
        Keyspace(bad)


@pytest.mark.parametrize("bad", [0, -1, 2**64, True, 1.5])
def test_versions_must_be_positive_uint64(bad):
    with pytest.raises(ValueError):
        KS.rollout(bad)


@pytest.mark.parametrize(
    "record",
    [
        ROLLOUT,
        WORKER,
        OVERLAPPING,
        DEADLINED,
        EpochRecord(3, 1.0, "c0"),
        RouterRecord("r0", "i", "a:1", 3, 2.0),
    ],
)
def test_records_round_trip(record):
    raw = codec.encode(record)
    assert json.loads(raw)["schema"] == codec.SCHEMA_VERSION
    assert codec.decode(type(record), raw, "k") == record


def _tampered(**changes) -> bytes:
    body = json.loads(codec.encode(ROLLOUT))
    body.update(changes)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff", "not JSON"),
        (b"[1]", "not a JSON object"),
        (_tampered(schema=99), f"schema 99 is not the schema this build reads ({codec.SCHEMA_VERSION})"),
        (_tampered(kind="worker"), "kind 'worker' where a rollout record belongs"),
        (_tampered(source=...), "missing fields ['source']"),
        (_tampered(extra=1), "unknown fields ['extra']"),
        (_tampered(version="12"), "field version: '12' is not a int"),
        (_tampered(version=True), "field version: True is not a int"),
        (_tampered(phase="LIVE"), "field phase: 'LIVE' is not a valid RolloutPhase"),
        (_tampered(fenced_workers="w9"), "field fenced_workers: 'w9' is not a list"),
        (
            _tampered(phase_deadline=None),
            "phase_deadline: must be set exactly while in flight (phase COMMITTED)",
        ),
        (_tampered(version=0), "version 0: must be an integer in [1, 2**64-1]"),
    ],
)
def test_bad_values_are_rejected_whole_with_the_reason(raw, reason):
    with pytest.raises(SchemaError) as caught:
        codec.decode(RolloutRecord, raw, "/epochserve/prod/rollouts/x")
    assert caught.value.reason.startswith(reason)
    assert str(caught.value).startswith("/epochserve/prod/rollouts/x: ")


def test_a_nested_drain_report_is_validated_like_a_record():
    body = json.loads(codec.encode(OVERLAPPING))
    body["last_drain"]["finished_previous"] = "3"
    with pytest.raises(SchemaError, match="field last_drain: field finished_previous: '3' is not a int"):
        codec.decode(WorkerRecord, json.dumps(body).encode(), "k")
    del body["last_drain"]["finished_previous"]
    with pytest.raises(SchemaError, match="missing fields"):
        codec.decode(WorkerRecord, json.dumps(body).encode(), "k")


def test_a_drain_deadline_must_come_before_the_commit_timeout():
    with pytest.raises(ValueError, match="drain_deadline"):
        dataclasses.replace(ROLLOUT, drain_deadline=ROLLOUT.commit_timeout)
    with pytest.raises(ValueError, match="retiring_version"):
        dataclasses.replace(WORKER, retiring_version=WORKER.serving_version)


def test_worker_staged_version_and_checksum_go_together():
    body = json.loads(codec.encode(WORKER))
    body["staged_checksum"] = None
    with pytest.raises(SchemaError, match="staged_version and staged_checksum"):
        codec.decode(WorkerRecord, json.dumps(body).encode(), "k")

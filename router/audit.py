"""AuditLog (`epochctl router --audit-log FILE`): one JSON line per completed response.

Each line holds what `epochctl verify` needs to recompute the logprobs under the named version:

    {"schema": 1, "time": <unix s>, "router_id", "request_id", "policy_version",
     "prompt_token_ids": [...], "prompt_text": "", "n",
     "sampling": {temperature, top_p, top_k, min_p, max_tokens, seed, stop_token_ids, ignore_eos,
                  num_top_logprobs, return_raw_logprobs, return_support_size, ...},  # as forwarded
     "samples": [{sample_index, policy_version, token_ids, processed_logprobs, raw_logprobs,
                  top_logprobs, support_sizes, finish_reason, abort_reason, num_prompt_tokens, worker_id,
                  diagnostics: {worker_id, tp_size, policy_version, seed, kernel_mode, ...},
                  prompt_logprobs, routed_experts, prompt_routed_experts, routed_top_k}]}

(the last four empty unless the client asked for them: scoring, routing replay of a MoE model).

Only responses that completed (status OK) are written; failed requests have no complete output.
Lines are written by a background thread so the router's event loop never waits on the disk;
close() writes what is queued, then closes the file (appended to, never truncated).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from epochserve.proto.convert import sampling_from_proto
from epochserve.proto.results import Sample
from epochserve.proto.v1 import common_pb2

logger = logging.getLogger(__name__)
SCHEMA_VERSION = 1


def audit_record(
    request: common_pb2.GenerateRequest, policy_version: int, samples: tuple[Sample, ...], router_id: str
) -> dict[str, Any]:
    """The line for one completed response (request as the router forwarded it)."""
    sampling = dataclasses.asdict(sampling_from_proto(request.sampling))
    sampling["stop_token_ids"] = sorted(sampling["stop_token_ids"])
    return {
        "schema": SCHEMA_VERSION,
        "time": time.time(),
        "router_id": router_id,
        "request_id": request.request_id,
        "policy_version": policy_version,
        "prompt_token_ids": list(request.prompt_token_ids),
        "prompt_text": request.prompt_text,
        "n": request.n if request.HasField("n") else 1,
        "sampling": sampling,
        "samples": [sample.to_json() for sample in samples],
    }


class AuditLog:
    """Appends records to `path` as JSON lines, from a writer thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_all, name="audit-log", daemon=True)
        self._thread.start()

    def write(self, record: dict[str, Any]) -> None:
        """Queue one record (never blocks)."""
        self._queue.put(record)

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)
        self._file.close()

    def _write_all(self) -> None:
        while (record := self._queue.get()) is not None:
            try:
                self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
                if self._queue.empty():
                    self._file.flush()
            except (OSError, TypeError, ValueError):
                logger.exception("audit log %s: cannot write request %s", self.path, record.get("request_id"))
        self._file.flush()

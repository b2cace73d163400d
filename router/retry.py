"""Retry decisions: what the router does after one attempt of a request on a worker (pure logic).

The rule behind every branch (docs/design.md §4 step 8, §6): a request may start again only while
nothing of it has reached the client, because a response must come from one worker and one
policy version (I1) — never stitched. Once something was sent, the request ends with an explicit
error naming it (I5).

    outcome          nothing sent yet                      something sent
    COMPLETED        done                                  done
    WORKER_LOST      again, same version, other worker     UNAVAILABLE (WorkerLostError)
    STALE_VERSION    again, same version, other worker;    (cannot happen: refused at start)
                     under the newer version once one
                     is committed (superseded)
    RETIRED          again, under the newer version        ABORTED (RolloutRetiredError)
    FAILED           the worker's status, as is            the worker's status, as is

and at most `max_attempts` starts in all (RetryBudgetError, UNAVAILABLE, after the last).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import grpc

from epochserve.router.errors import RetryBudgetError, RolloutRetiredError, WorkerLostError


class Outcome(enum.Enum):
    """How one attempt on a worker ended."""

    COMPLETED = "completed"  # every sample finished and was forwarded
    WORKER_LOST = "worker_lost"  # transport failure, UNAVAILABLE, shutdown, or the stream ended early
    STALE_VERSION = "stale_version"  # FAILED_PRECONDITION: the worker no longer serves the version
    RETIRED = "retired"  # a drain=abort rollout retired the request
    FAILED = "failed"  # any other worker status (INVALID_ARGUMENT, INTERNAL, ...): final


class Action(enum.Enum):
    DONE = "done"
    RETRY_SAME_VERSION = "retry_same_version"  # another worker serving the pinned version
    RERUN_NEWER_VERSION = "rerun_newer_version"  # pin again, above the retired version
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class AttemptReport:
    """What the request flow knows after an attempt. Created by router/attempt.py."""

    outcome: Outcome
    worker_id: str
    detail: str  # the worker's status message, or what went wrong
    has_sent: bool  # anything of the request reached the client, in this attempt or before
    num_attempts: int  # starts so far, this one included


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    error: Exception | None = None  # set for FAIL, except FAILED (the flow re-raises the worker's)


# Worker statuses after which the request may run elsewhere (nothing else is wrong with it).
_LOST_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED})


def classify_status(code: grpc.StatusCode, details: str) -> Outcome:
    """The outcome of a worker call that ended with a status other than OK, when the router did
    not cancel it itself. CANCELLED then means the worker's server cancelled it (shutting down);
    an INTERNAL from HTTP/2 (RST_STREAM) is a broken connection, not a runtime guard."""
    if code in _LOST_CODES or (code == grpc.StatusCode.INTERNAL and "RST_STREAM" in details):
        return Outcome.WORKER_LOST
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return Outcome.STALE_VERSION
    return Outcome.FAILED


def decide(
    report: AttemptReport, request_id: str, max_attempts: int, *, is_superseded: bool = False
) -> Decision:
    """The action after an attempt; see the module docstring's table. `is_superseded`: a version
    above the request's pinned one is committed. A worker that refused the pinned version then has
    moved past it (an overlap drain whose old version retired, a swap), and other workers follow:
    the request moves up rather than chase a version that is going away."""
    match report.outcome:
        case Outcome.COMPLETED:
            return Decision(Action.DONE)
        case Outcome.FAILED:
            return Decision(Action.FAIL)
        case Outcome.RETIRED if report.has_sent:
            return Decision(
                Action.FAIL,
                RolloutRetiredError(
                    f"request {request_id}: retired by a drain=abort rollout after tokens were sent "
                    f"({report.detail})"
                ),
            )
        case Outcome.WORKER_LOST | Outcome.STALE_VERSION if report.has_sent:
            return Decision(
                Action.FAIL,
                WorkerLostError(
                    f"request {request_id}: worker {report.worker_id} was lost after tokens were sent "
                    f"({report.detail}); the output is not resumed elsewhere"
                ),
            )
    if report.num_attempts >= max_attempts:
        return Decision(
            Action.FAIL,
            RetryBudgetError(
                f"request {request_id}: gave up after {report.num_attempts} attempts "
                f"(last on {report.worker_id}: {report.detail})"
            ),
        )
    if report.outcome is Outcome.RETIRED or (report.outcome is Outcome.STALE_VERSION and is_superseded):
        return Decision(Action.RERUN_NEWER_VERSION)
    return Decision(Action.RETRY_SAME_VERSION)

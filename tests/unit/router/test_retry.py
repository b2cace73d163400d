"""Retry decisions after an attempt: re-run only while nothing reached the client (never stitch)."""

import grpc
import pytest

from epochserve.proto.status import status_of
from epochserve.router.errors import RetryBudgetError, RolloutRetiredError, WorkerLostError
from epochserve.router.retry import Action, AttemptReport, Outcome, classify_status, decide

MAX_ATTEMPTS = 3


def report(outcome, has_sent=False, num_attempts=1):
    return AttemptReport(outcome, "worker-1", "UNAVAILABLE: Socket closed", has_sent, num_attempts)


@pytest.mark.parametrize(
    ("outcome", "action"),
    [
        (Outcome.COMPLETED, Action.DONE),
        (Outcome.WORKER_LOST, Action.RETRY_SAME_VERSION),
        (Outcome.STALE_VERSION, Action.RETRY_SAME_VERSION),
        (Outcome.RETIRED, Action.RERUN_NEWER_VERSION),
        (Outcome.FAILED, Action.FAIL),
    ],
)
def test_nothing_sent_yet(outcome, action):
    decision = decide(report(outcome), "req-9", MAX_ATTEMPTS)
    assert decision.action is action
    assert decision.error is None  # FAILED re-raises the worker's own status


@pytest.mark.parametrize(
    ("outcome", "action"),
    [
        (Outcome.STALE_VERSION, Action.RERUN_NEWER_VERSION),
        (Outcome.WORKER_LOST, Action.RETRY_SAME_VERSION),
        (Outcome.RETIRED, Action.RERUN_NEWER_VERSION),
    ],
)
def test_a_worker_that_moved_past_a_superseded_version_sends_the_request_up(outcome, action):
    # An overlap drain's old version retired on the worker (or it swapped) after a newer version
    # was committed: the request moves up instead of chasing the old version from worker to worker.
    assert decide(report(outcome), "r", MAX_ATTEMPTS, is_superseded=True).action is action


def test_a_stale_version_after_tokens_were_sent_still_fails_when_superseded():
    decision = decide(report(Outcome.STALE_VERSION, has_sent=True), "r", MAX_ATTEMPTS, is_superseded=True)
    assert decision.action is Action.FAIL and isinstance(decision.error, WorkerLostError)


def test_a_worker_lost_after_tokens_were_sent_ends_unavailable_naming_the_request():
    decision = decide(report(Outcome.WORKER_LOST, has_sent=True), "req-9", MAX_ATTEMPTS)
    assert decision.action is Action.FAIL and isinstance(decision.error, WorkerLostError)
    assert status_of(decision.error) == grpc.StatusCode.UNAVAILABLE
    assert "req-9" in str(decision.error) and "worker-1" in str(decision.error)


def test_a_request_retired_after_tokens_were_sent_ends_aborted():
    decision = decide(report(Outcome.RETIRED, has_sent=True), "req-9", MAX_ATTEMPTS)
    assert isinstance(decision.error, RolloutRetiredError)
    assert status_of(decision.error) == grpc.StatusCode.ABORTED and "req-9" in str(decision.error)


def test_completed_is_done_even_on_the_last_attempt():
    assert decide(report(Outcome.COMPLETED, True, MAX_ATTEMPTS), "r", MAX_ATTEMPTS).action is Action.DONE


@pytest.mark.parametrize("outcome", [Outcome.WORKER_LOST, Outcome.STALE_VERSION, Outcome.RETIRED])
def test_attempts_are_bounded(outcome):
    assert decide(report(outcome, num_attempts=MAX_ATTEMPTS - 1), "r", MAX_ATTEMPTS).action is not Action.FAIL
    decision = decide(report(outcome, num_attempts=MAX_ATTEMPTS), "r", MAX_ATTEMPTS)
    assert decision.action is Action.FAIL and isinstance(decision.error, RetryBudgetError)
    assert status_of(decision.error) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("code", "details", "outcome"),
    [
        (grpc.StatusCode.UNAVAILABLE, "Socket closed", Outcome.WORKER_LOST),
        (grpc.StatusCode.UNAVAILABLE, "worker is not ready (catching up or fenced)", Outcome.WORKER_LOST),
        (grpc.StatusCode.CANCELLED, "server shutting down", Outcome.WORKER_LOST),
        (grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2", Outcome.WORKER_LOST),
        (grpc.StatusCode.FAILED_PRECONDITION, "request pinned to policy version 1", Outcome.STALE_VERSION),
        (grpc.StatusCode.INTERNAL, "request r: non-finite logits", Outcome.FAILED),
        (grpc.StatusCode.INVALID_ARGUMENT, "prompt_text: ...", Outcome.FAILED),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", Outcome.FAILED),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "no KV blocks", Outcome.FAILED),
    ],
)
def test_worker_statuses_are_classified(code, details, outcome):
    assert classify_status(code, details) is outcome

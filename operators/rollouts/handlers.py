"""kopf handlers for PolicyRollout: a daemon that drives and mirrors it, a finalizer that aborts.

The daemon runs while the PolicyRollout exists and returns once the rollout is final; kopf reruns
it after an operator restart (it then returns at once for a final status). Registering a delete
handler makes kopf put a finalizer on every PolicyRollout, so a delete waits until
`finalize_rollout` decided whether to abort. A PolicyRollout whose EpochCluster is gone is
released without asking anyone: there is no fleet left to abort.
"""

from __future__ import annotations

from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from epochserve.errors import RolloutBusyError
from epochserve.operators.context import context_of
from epochserve.operators.names import GROUP, ROLLOUT_PLURAL, VERSION
from epochserve.operators.rollouts.admin import AdminAuthError, AdminUnavailableError
from epochserve.operators.rollouts.driver import drive_rollout, finalize_rollout
from epochserve.operators.rollouts.request import RolloutRequest, parse_rollout
from epochserve.operators.rollouts.targets import KubeStatusSink, resolve_target
from epochserve.operators.spec import SpecError

RETRY_DELAY_S = 10.0
_RETRYABLE = (AdminUnavailableError, AdminAuthError, RolloutBusyError, ApiException, KeyError)


def _request(body: kopf.Body) -> RolloutRequest:
    try:
        return parse_rollout(body)
    except SpecError as error:
        raise kopf.PermanentError(str(error)) from error


@kopf.daemon(GROUP, VERSION, ROLLOUT_PLURAL, cancellation_timeout=5.0)
async def mirror_rollout(body: kopf.Body, status: kopf.Status, memo: kopf.Memo, **_: Any) -> None:
    """Start the rollout through the Admin API and mirror it into status until it ends."""
    context = context_of(memo)
    request = _request(body)
    try:
        target = await resolve_target(context.api_client, request)
        if target is None:
            raise kopf.TemporaryError(f"EpochCluster {request.cluster} not found", delay=RETRY_DELAY_S)
        sink = KubeStatusSink(context.api_client, request)
        async with context.connector.connect(target) as admin:
            await drive_rollout(admin, request, sink, dict(status))
    except _RETRYABLE as error:
        raise kopf.TemporaryError(f"{type(error).__name__}: {error}", delay=RETRY_DELAY_S) from error


@kopf.on.delete(GROUP, VERSION, ROLLOUT_PLURAL)
async def abort_uncommitted(
    body: kopf.Body, status: kopf.Status, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Finalizer: abort the rollout if it has not committed; keep it if it has."""
    context = context_of(memo)
    request = _request(body)
    try:
        target = await resolve_target(context.api_client, request)
        if target is None:
            logger.info("EpochCluster %s is gone; nothing to abort", request.cluster)
            return
        async with context.connector.connect(target) as admin:
            outcome = await finalize_rollout(admin, request, dict(status))
    except _RETRYABLE as error:
        raise kopf.TemporaryError(f"{type(error).__name__}: {error}", delay=RETRY_DELAY_S) from error
    logger.info("PolicyRollout %s deleted: version %d %s", request.name, request.version, outcome.value)

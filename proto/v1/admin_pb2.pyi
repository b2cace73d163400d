from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RolloutPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLLOUT_PHASE_UNSPECIFIED: _ClassVar[RolloutPhase]
    ROLLOUT_PHASE_STAGING: _ClassVar[RolloutPhase]
    ROLLOUT_PHASE_COMMITTED: _ClassVar[RolloutPhase]
    ROLLOUT_PHASE_DONE: _ClassVar[RolloutPhase]
    ROLLOUT_PHASE_ABORTED: _ClassVar[RolloutPhase]

class DrainPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DRAIN_POLICY_UNSPECIFIED: _ClassVar[DrainPolicy]
    DRAIN_POLICY_FINISH: _ClassVar[DrainPolicy]
    DRAIN_POLICY_ABORT: _ClassVar[DrainPolicy]
    DRAIN_POLICY_OVERLAP: _ClassVar[DrainPolicy]

class WorkerStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_STATUS_UNSPECIFIED: _ClassVar[WorkerStatus]
    WORKER_STATUS_LOADING: _ClassVar[WorkerStatus]
    WORKER_STATUS_READY: _ClassVar[WorkerStatus]
ROLLOUT_PHASE_UNSPECIFIED: RolloutPhase
ROLLOUT_PHASE_STAGING: RolloutPhase
ROLLOUT_PHASE_COMMITTED: RolloutPhase
ROLLOUT_PHASE_DONE: RolloutPhase
ROLLOUT_PHASE_ABORTED: RolloutPhase
DRAIN_POLICY_UNSPECIFIED: DrainPolicy
DRAIN_POLICY_FINISH: DrainPolicy
DRAIN_POLICY_ABORT: DrainPolicy
DRAIN_POLICY_OVERLAP: DrainPolicy
WORKER_STATUS_UNSPECIFIED: WorkerStatus
WORKER_STATUS_LOADING: WorkerStatus
WORKER_STATUS_READY: WorkerStatus

class Rollout(_message.Message):
    __slots__ = ("version", "source", "drain", "phase", "manifest_checksum", "reason", "created_at", "updated_at", "phase_deadline", "updated_by", "fenced_worker_ids", "fenced_router_ids", "commit_timeout_seconds", "drain_deadline_seconds")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    PHASE_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    FENCED_WORKER_IDS_FIELD_NUMBER: _ClassVar[int]
    FENCED_ROUTER_IDS_FIELD_NUMBER: _ClassVar[int]
    COMMIT_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    version: int
    source: str
    drain: DrainPolicy
    phase: RolloutPhase
    manifest_checksum: str
    reason: str
    created_at: float
    updated_at: float
    phase_deadline: float
    updated_by: str
    fenced_worker_ids: _containers.RepeatedScalarFieldContainer[str]
    fenced_router_ids: _containers.RepeatedScalarFieldContainer[str]
    commit_timeout_seconds: float
    drain_deadline_seconds: float
    def __init__(self, version: _Optional[int] = ..., source: _Optional[str] = ..., drain: _Optional[_Union[DrainPolicy, str]] = ..., phase: _Optional[_Union[RolloutPhase, str]] = ..., manifest_checksum: _Optional[str] = ..., reason: _Optional[str] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ..., phase_deadline: _Optional[float] = ..., updated_by: _Optional[str] = ..., fenced_worker_ids: _Optional[_Iterable[str]] = ..., fenced_router_ids: _Optional[_Iterable[str]] = ..., commit_timeout_seconds: _Optional[float] = ..., drain_deadline_seconds: _Optional[float] = ...) -> None: ...

class DrainReport(_message.Message):
    __slots__ = ("version", "drain", "first_token_seconds", "retire_seconds", "finished_previous", "aborted_previous", "reason")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RETIRE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    ABORTED_PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    version: int
    drain: DrainPolicy
    first_token_seconds: float
    retire_seconds: float
    finished_previous: int
    aborted_previous: int
    reason: str
    def __init__(self, version: _Optional[int] = ..., drain: _Optional[_Union[DrainPolicy, str]] = ..., first_token_seconds: _Optional[float] = ..., retire_seconds: _Optional[float] = ..., finished_previous: _Optional[int] = ..., aborted_previous: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("worker_id", "address", "tp_size", "capacity", "status", "serving_version", "serving_checksum", "fingerprint", "staged_version", "staged_checksum", "failed_version", "failure_reason", "updated_at", "retiring_version", "last_drain")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TP_SIZE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVING_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    STAGED_VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGED_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    FAILED_VERSION_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    RETIRING_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_DRAIN_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    address: str
    tp_size: int
    capacity: int
    status: WorkerStatus
    serving_version: int
    serving_checksum: str
    fingerprint: str
    staged_version: int
    staged_checksum: str
    failed_version: int
    failure_reason: str
    updated_at: float
    retiring_version: int
    last_drain: DrainReport
    def __init__(self, worker_id: _Optional[str] = ..., address: _Optional[str] = ..., tp_size: _Optional[int] = ..., capacity: _Optional[int] = ..., status: _Optional[_Union[WorkerStatus, str]] = ..., serving_version: _Optional[int] = ..., serving_checksum: _Optional[str] = ..., fingerprint: _Optional[str] = ..., staged_version: _Optional[int] = ..., staged_checksum: _Optional[str] = ..., failed_version: _Optional[int] = ..., failure_reason: _Optional[str] = ..., updated_at: _Optional[float] = ..., retiring_version: _Optional[int] = ..., last_drain: _Optional[_Union[DrainReport, _Mapping]] = ...) -> None: ...

class RouterInfo(_message.Message):
    __slots__ = ("router_id", "address", "acked_epoch", "updated_at")
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ACKED_EPOCH_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    router_id: str
    address: str
    acked_epoch: int
    updated_at: float
    def __init__(self, router_id: _Optional[str] = ..., address: _Optional[str] = ..., acked_epoch: _Optional[int] = ..., updated_at: _Optional[float] = ...) -> None: ...

class RolloutStatus(_message.Message):
    __slots__ = ("rollout", "committed_epoch", "workers", "routers", "num_staged", "num_serving", "num_acked", "num_ready_workers", "revision")
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_EPOCH_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    ROUTERS_FIELD_NUMBER: _ClassVar[int]
    NUM_STAGED_FIELD_NUMBER: _ClassVar[int]
    NUM_SERVING_FIELD_NUMBER: _ClassVar[int]
    NUM_ACKED_FIELD_NUMBER: _ClassVar[int]
    NUM_READY_WORKERS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    committed_epoch: int
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    routers: _containers.RepeatedCompositeFieldContainer[RouterInfo]
    num_staged: int
    num_serving: int
    num_acked: int
    num_ready_workers: int
    revision: int
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ..., committed_epoch: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ..., routers: _Optional[_Iterable[_Union[RouterInfo, _Mapping]]] = ..., num_staged: _Optional[int] = ..., num_serving: _Optional[int] = ..., num_acked: _Optional[int] = ..., num_ready_workers: _Optional[int] = ..., revision: _Optional[int] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ("request_id", "version", "source", "drain", "manifest_checksum", "stage_timeout_seconds", "commit_timeout_seconds", "drain_deadline_seconds")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    STAGE_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COMMIT_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    version: int
    source: str
    drain: DrainPolicy
    manifest_checksum: str
    stage_timeout_seconds: float
    commit_timeout_seconds: float
    drain_deadline_seconds: float
    def __init__(self, request_id: _Optional[str] = ..., version: _Optional[int] = ..., source: _Optional[str] = ..., drain: _Optional[_Union[DrainPolicy, str]] = ..., manifest_checksum: _Optional[str] = ..., stage_timeout_seconds: _Optional[float] = ..., commit_timeout_seconds: _Optional[float] = ..., drain_deadline_seconds: _Optional[float] = ...) -> None: ...

class StartRolloutResponse(_message.Message):
    __slots__ = ("request_id", "rollout")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    rollout: Rollout
    def __init__(self, request_id: _Optional[str] = ..., rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class GetRolloutRequest(_message.Message):
    __slots__ = ("request_id", "version")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    version: int
    def __init__(self, request_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetRolloutResponse(_message.Message):
    __slots__ = ("request_id", "status")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    status: RolloutStatus
    def __init__(self, request_id: _Optional[str] = ..., status: _Optional[_Union[RolloutStatus, _Mapping]] = ...) -> None: ...

class WatchRolloutRequest(_message.Message):
    __slots__ = ("request_id", "version")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    version: int
    def __init__(self, request_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class WatchRolloutResponse(_message.Message):
    __slots__ = ("request_id", "status")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    status: RolloutStatus
    def __init__(self, request_id: _Optional[str] = ..., status: _Optional[_Union[RolloutStatus, _Mapping]] = ...) -> None: ...

class AbortRolloutRequest(_message.Message):
    __slots__ = ("request_id", "version", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    version: int
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class AbortRolloutResponse(_message.Message):
    __slots__ = ("request_id", "rollout")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    rollout: Rollout
    def __init__(self, request_id: _Optional[str] = ..., rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class ListRolloutsRequest(_message.Message):
    __slots__ = ("request_id", "limit")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    limit: int
    def __init__(self, request_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListRolloutsResponse(_message.Message):
    __slots__ = ("request_id", "rollouts", "committed_epoch")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_EPOCH_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    rollouts: _containers.RepeatedCompositeFieldContainer[Rollout]
    committed_epoch: int
    def __init__(self, request_id: _Optional[str] = ..., rollouts: _Optional[_Iterable[_Union[Rollout, _Mapping]]] = ..., committed_epoch: _Optional[int] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("request_id", "committed_epoch", "workers", "routers", "leader_id", "leader_address")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_EPOCH_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    ROUTERS_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    committed_epoch: int
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    routers: _containers.RepeatedCompositeFieldContainer[RouterInfo]
    leader_id: str
    leader_address: str
    def __init__(self, request_id: _Optional[str] = ..., committed_epoch: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ..., routers: _Optional[_Iterable[_Union[RouterInfo, _Mapping]]] = ..., leader_id: _Optional[str] = ..., leader_address: _Optional[str] = ...) -> None: ...

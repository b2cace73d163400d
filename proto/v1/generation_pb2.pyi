from epochserve.proto.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPolicyResponse(_message.Message):
    __slots__ = ("policy_version", "rollout_done", "num_workers_serving", "num_workers", "router_id", "model_path")
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_DONE_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_SERVING_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    rollout_done: bool
    num_workers_serving: int
    num_workers: int
    router_id: str
    model_path: str
    def __init__(self, policy_version: _Optional[int] = ..., rollout_done: _Optional[bool] = ..., num_workers_serving: _Optional[int] = ..., num_workers: _Optional[int] = ..., router_id: _Optional[str] = ..., model_path: _Optional[str] = ...) -> None: ...

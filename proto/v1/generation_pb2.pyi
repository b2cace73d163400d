from epochserve.proto.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPolicyResponse(_message.Message):
    __slots__ = ("policy_version", "rollout_done", "num_workers_serving", "num_workers", "router_id", "model_path", "limits", "stopping")
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_DONE_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_SERVING_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    STOPPING_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    rollout_done: bool
    num_workers_serving: int
    num_workers: int
    router_id: str
    model_path: str
    limits: ModelLimits
    stopping: bool
    def __init__(self, policy_version: _Optional[int] = ..., rollout_done: _Optional[bool] = ..., num_workers_serving: _Optional[int] = ..., num_workers: _Optional[int] = ..., router_id: _Optional[str] = ..., model_path: _Optional[str] = ..., limits: _Optional[_Union[ModelLimits, _Mapping]] = ..., stopping: _Optional[bool] = ...) -> None: ...

class ModelLimits(_message.Message):
    __slots__ = ("vocab_size", "max_model_len", "max_n")
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    MAX_N_FIELD_NUMBER: _ClassVar[int]
    vocab_size: int
    max_model_len: int
    max_n: int
    def __init__(self, vocab_size: _Optional[int] = ..., max_model_len: _Optional[int] = ..., max_n: _Optional[int] = ...) -> None: ...

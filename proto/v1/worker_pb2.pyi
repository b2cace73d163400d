from epochserve.proto.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionRequest(_message.Message):
    __slots__ = ("stream_id", "generate", "cancel", "ping", "timeout_ms")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    generate: _common_pb2.GenerateRequest
    cancel: SessionCancel
    ping: SessionPing
    timeout_ms: int
    def __init__(self, stream_id: _Optional[int] = ..., generate: _Optional[_Union[_common_pb2.GenerateRequest, _Mapping]] = ..., cancel: _Optional[_Union[SessionCancel, _Mapping]] = ..., ping: _Optional[_Union[SessionPing, _Mapping]] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class SessionCancel(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class SessionResponse(_message.Message):
    __slots__ = ("stream_id", "response", "error", "pong")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    response: _common_pb2.GenerateResponse
    error: SessionError
    pong: SessionPing
    def __init__(self, stream_id: _Optional[int] = ..., response: _Optional[_Union[_common_pb2.GenerateResponse, _Mapping]] = ..., error: _Optional[_Union[SessionError, _Mapping]] = ..., pong: _Optional[_Union[SessionPing, _Mapping]] = ...) -> None: ...

class SessionPing(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class SessionError(_message.Message):
    __slots__ = ("code", "details")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    code: int
    details: str
    def __init__(self, code: _Optional[int] = ..., details: _Optional[str] = ...) -> None: ...

class GetWorkerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KvCacheUsage(_message.Message):
    __slots__ = ("block_size", "num_blocks_total", "num_blocks_free", "num_blocks_cached", "prefix_cache_queries", "prefix_cache_hits")
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FREE_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_CACHED_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_QUERIES_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    block_size: int
    num_blocks_total: int
    num_blocks_free: int
    num_blocks_cached: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    def __init__(self, block_size: _Optional[int] = ..., num_blocks_total: _Optional[int] = ..., num_blocks_free: _Optional[int] = ..., num_blocks_cached: _Optional[int] = ..., prefix_cache_queries: _Optional[int] = ..., prefix_cache_hits: _Optional[int] = ...) -> None: ...

class GetWorkerInfoResponse(_message.Message):
    __slots__ = ("worker_id", "policy_version", "architecture", "model_path", "vocab_size", "max_model_len", "tp_size", "device", "dtype", "kernel_mode", "kv_cache", "num_running_seqs", "num_waiting_seqs", "eos_token_ids", "max_n", "session_port", "num_preemptions")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    TP_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    KERNEL_MODE_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_FIELD_NUMBER: _ClassVar[int]
    NUM_RUNNING_SEQS_FIELD_NUMBER: _ClassVar[int]
    NUM_WAITING_SEQS_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_N_FIELD_NUMBER: _ClassVar[int]
    SESSION_PORT_FIELD_NUMBER: _ClassVar[int]
    NUM_PREEMPTIONS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    policy_version: int
    architecture: str
    model_path: str
    vocab_size: int
    max_model_len: int
    tp_size: int
    device: str
    dtype: str
    kernel_mode: str
    kv_cache: KvCacheUsage
    num_running_seqs: int
    num_waiting_seqs: int
    eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    max_n: int
    session_port: int
    num_preemptions: int
    def __init__(self, worker_id: _Optional[str] = ..., policy_version: _Optional[int] = ..., architecture: _Optional[str] = ..., model_path: _Optional[str] = ..., vocab_size: _Optional[int] = ..., max_model_len: _Optional[int] = ..., tp_size: _Optional[int] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., kernel_mode: _Optional[str] = ..., kv_cache: _Optional[_Union[KvCacheUsage, _Mapping]] = ..., num_running_seqs: _Optional[int] = ..., num_waiting_seqs: _Optional[int] = ..., eos_token_ids: _Optional[_Iterable[int]] = ..., max_n: _Optional[int] = ..., session_port: _Optional[int] = ..., num_preemptions: _Optional[int] = ...) -> None: ...

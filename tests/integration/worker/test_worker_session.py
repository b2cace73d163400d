"""A real worker's Session stream (many requests over one call, as a router sends them): the
same outputs as Generate, per-request errors that leave the stream up, and every way a request
can end early (cancel, its timeout, the stream's end) frees its blocks. Every test of the stream
runs over both of its transports: the gRPC Session call and the session link (framed TCP)."""

import asyncio
import contextlib
import queue
import socket
import struct
import threading
import time

import grpc
import pytest
from fixtures.grpc_client import info_of, wait_for_idle_pool
from fixtures.models import build_tiny_model
from fixtures.processes import running_worker

from epochserve.proto.framing import MAGIC, encode
from epochserve.proto.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from epochserve.router.session import WorkerSession
from epochserve.router.waiting import Deadline

VOCAB = 512
LONG = dict(prompt_token_ids=list(range(3, 40)), max_tokens=3900, ignore_eos=True)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    root = tmp_path_factory.mktemp("worker_session")
    model_dir = build_tiny_model("llama", root / "model", max_position_embeddings=4096)
    with running_worker(model_dir, root, "--block-size", "16", "--max-n", "4") as server:
        yield server


@pytest.fixture(scope="module")
def address(worker):
    return worker.address


@pytest.fixture(scope="module")
def session_port(worker):
    port = int(worker.info["session_port"])
    assert port > 0, "the worker serves a session link by default"
    return port


@pytest.fixture(scope="module")
def stub(address):
    with grpc.insecure_channel(address) as channel:
        yield worker_pb2_grpc.WorkerStub(channel)


class Session:
    """A Session driven from the test: send() requests, next_for(stream_id) responses. Subclasses
    are its transports: `_put(message)` sends, `_incoming()` yields what the worker sends, `end()`
    half-closes (the router is done), `drop()` cuts it (the router's process died)."""

    def __init__(self):
        self._by_stream: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._route, daemon=True).start()

    def _queue(self, stream_id):
        with self._lock:
            return self._by_stream.setdefault(stream_id, queue.Queue())

    def _route(self):
        for message in self._incoming():
            self._queue(message.stream_id).put(message)

    def generate(self, stream_id, request_id, timeout_ms=0, n=1, **fields):
        sampling = {k: fields.pop(k) for k in list(fields) if k != "prompt_token_ids"}
        request = common_pb2.GenerateRequest(
            request_id=request_id, n=n, sampling=common_pb2.SamplingParams(**sampling), **fields
        )
        self._put(worker_pb2.SessionRequest(stream_id=stream_id, generate=request, timeout_ms=timeout_ms))
        return request

    def cancel(self, stream_id):
        cancel = worker_pb2.SessionCancel(reason="test cancel")
        self._put(worker_pb2.SessionRequest(stream_id=stream_id, cancel=cancel))

    def next_for(self, stream_id, timeout=30):
        return self._queue(stream_id).get(timeout=timeout)

    def until_finished(self, stream_id, n=1):
        messages = []
        while sum(m.response.HasField("finish") for m in messages) < n:
            message = self.next_for(stream_id)
            assert not message.HasField("error"), message.error.details
            messages.append(message)
        return [m.response for m in messages]


class GrpcSession(Session):
    _END = object()

    def __init__(self, stub, session_port):
        self._outgoing: queue.Queue = queue.Queue()
        self.call = stub.Session(iter(self._outgoing.get, self._END), timeout=60)
        super().__init__()

    def _put(self, message):
        self._outgoing.put(message)

    def _incoming(self):
        with contextlib.suppress(grpc.RpcError):  # the test ended the call
            yield from self.call

    def end(self):
        self._outgoing.put(self._END)

    def drop(self):
        self.call.cancel()


class LinkSession(Session):
    """The session link from a plain blocking socket: the wire format written out by hand."""

    def __init__(self, stub, session_port):
        self.sock = socket.create_connection(("127.0.0.1", session_port), timeout=60)
        self.sock.sendall(MAGIC)
        assert self._read_exactly(len(MAGIC)) == MAGIC, "the worker greets with MAGIC"
        super().__init__()

    def _read_exactly(self, size):
        data = b""
        while len(data) < size:
            part = self.sock.recv(size - len(data))
            if not part:
                raise EOFError
            data += part
        return data

    def _put(self, message):
        self.sock.sendall(encode(message))

    def _incoming(self):
        try:
            while True:
                length = int.from_bytes(self._read_exactly(4), "big")
                yield worker_pb2.SessionResponse.FromString(self._read_exactly(length))
        except (EOFError, OSError):
            pass  # the test ended the link

    def end(self):
        self.sock.shutdown(socket.SHUT_WR)

    def drop(self):
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
        self.sock.close()


@pytest.fixture(params=[GrpcSession, LinkSession], ids=["grpc", "link"])
def open_session(request, stub, session_port):
    return lambda: request.param(stub, session_port)


def samples(responses):
    """{sample_index: (token ids, logprobs)} of a response stream."""
    out: dict[int, tuple[list[int], list[float]]] = {}
    for r in responses:
        tokens, logprobs = out.setdefault(r.sample_index, ([], []))
        if r.HasField("chunk"):
            tokens.extend(r.chunk.token_ids)
            logprobs.extend(r.chunk.logprobs)
    return out


def test_interleaved_requests_get_exactly_their_generate_outputs(stub, open_session):
    session = open_session()
    shapes = {
        1: dict(prompt_token_ids=[5, 6, 7, 8], max_tokens=12, seed=3, temperature=0.8, n=2, ignore_eos=True),
        2: dict(prompt_token_ids=[9, 10, 11], max_tokens=7, seed=4, temperature=1.0, top_p=0.9),
        3: dict(prompt_token_ids=[12, 13], max_tokens=9, temperature=0.0, ignore_eos=True),
    }
    requests = {sid: session.generate(sid, f"s{sid}", **dict(fields)) for sid, fields in shapes.items()}
    over_session = {sid: session.until_finished(sid, requests[sid].n) for sid in shapes}
    session.end()
    for sid, request in requests.items():
        assert {r.request_id for r in over_session[sid]} == {request.request_id}
        direct = samples(list(stub.Generate(request, timeout=60)))
        got = samples(over_session[sid])
        assert sorted(got) == sorted(direct) == list(range(request.n))
        for index, (tokens, logprobs) in direct.items():
            assert tokens and got[index][0] == tokens
            # Run alone vs. beside the other two: fp32 rows may round differently in a batch.
            assert got[index][1] == pytest.approx(logprobs, abs=1e-4)


def test_a_bad_request_fails_alone_and_the_session_goes_on(stub, open_session):
    session = open_session()
    session.generate(1, "bad", prompt_token_ids=[5, VOCAB], max_tokens=3)
    error = session.next_for(1)
    assert error.HasField("error")
    assert error.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "prompt_token_ids" in error.error.details
    session.generate(2, "good", prompt_token_ids=[5, 6], max_tokens=3, ignore_eos=True)
    good = session.until_finished(2)
    assert sum(len(r.chunk.token_ids) for r in good if r.HasField("chunk")) == 3
    session.end()


def test_cancel_frees_the_request_and_leaves_the_others_running(stub, open_session):
    session = open_session()
    session.generate(1, "to-cancel", **LONG)
    session.generate(2, "keeps-running", prompt_token_ids=[5, 6, 7], max_tokens=40, ignore_eos=True)
    assert session.next_for(1).response.HasField("chunk")
    session.cancel(1)
    kept = session.until_finished(2)
    assert sum(len(r.chunk.token_ids) for r in kept if r.HasField("chunk")) == 40
    wait_for_idle_pool(stub)
    session.end()


def test_a_requests_timeout_ends_it_with_deadline_exceeded(stub, open_session):
    session = open_session()
    session.generate(1, "slow", timeout_ms=300, **LONG)
    message = session.next_for(1)
    while not message.HasField("error"):
        assert not message.response.HasField("finish"), "the long request finished within 300 ms"
        message = session.next_for(1)
    assert message.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert "slow" in message.error.details
    wait_for_idle_pool(stub)
    session.end()


@pytest.mark.parametrize("how", ["half-close", "cancel"])
def test_the_end_of_the_session_aborts_its_requests(stub, open_session, how):
    session = open_session()
    session.generate(1, f"orphan-{how}", n=2, **LONG)
    assert session.next_for(1).response.HasField("chunk")
    info = info_of(stub)
    assert info.num_running_seqs + info.num_waiting_seqs == 2  # the second may still wait its turn
    if how == "cancel":
        session.drop()  # the router's process died or closed its channel
    else:
        session.end()
    wait_for_idle_pool(stub)


def test_a_ping_is_answered_with_its_sequence(open_session):
    session = open_session()
    session._put(worker_pb2.SessionRequest(ping=worker_pb2.SessionPing(sequence=41)))
    pong = session.next_for(0)
    assert pong.HasField("pong") and pong.pong.sequence == 41
    session.end()


@pytest.mark.parametrize("transport", ["grpc", "link"])
def test_the_routers_session_call_ends_at_its_deadline_and_the_session_goes_on(address, stub, transport):
    """The router's side (router/session.py): a call whose deadline passes mid-stream raises
    DEADLINE_EXCEEDED at once (one timer per call, whichever of it and the worker's own timeout
    comes first), the worker frees the request, and the next call on the same stream runs."""

    async def run() -> tuple[int, float, int]:
        async with grpc.aio.insecure_channel(address) as channel:
            link_host = "127.0.0.1" if transport == "link" else None
            session = WorkerSession(
                worker_pb2_grpc.WorkerStub(channel), "worker-under-test", link_host=link_host
            )
            sampling = common_pb2.SamplingParams(max_tokens=3900, ignore_eos=True)
            slow = common_pb2.GenerateRequest(
                request_id="router-deadline", prompt_token_ids=list(range(3, 40)), sampling=sampling
            )
            call = await session.start(slow, Deadline.after(0.4))
            assert session.transport_kind == transport
            started, messages = time.monotonic(), 0
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                while await call.read() is not None:
                    messages += 1
            assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            elapsed = time.monotonic() - started
            short = common_pb2.GenerateRequest(
                request_id="after-deadline",
                prompt_token_ids=[5, 6, 7],
                sampling=common_pb2.SamplingParams(max_tokens=5, ignore_eos=True),
            )
            call = await session.start(short, Deadline.after(30))
            tokens = 0
            while (response := await call.read()) is not None:
                tokens += len(response.chunk.token_ids)
            await session.close()
            return messages, elapsed, tokens

    messages, elapsed, tokens = asyncio.run(run())
    assert messages > 0 and elapsed < 5.0
    assert tokens == 5
    wait_for_idle_pool(stub)

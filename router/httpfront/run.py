"""Run one GenerateRequest through the backend and turn its messages into Pieces of text.

The request runs in a task of its own that hands each message over a small queue (so a slow HTTP
client slows the worker stream down, as a slow gRPC client does). Whatever is queued when the reader
wakes is taken at once and makes one piece per sample (one SSE event per choice, not per token): the
slower the client, or the busier the router (_coalesced), the more tokens each event carries, and
the fewer events there are to write.
A stream's headers go out only once its first message came: until then every failure (validation,
a full queue, no worker, the deadline) is still an HTTP status. When every sample matched a stop
string while the worker still generates, the request is aborted on it (router/aborting.py), the
same as a gRPC Abort.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from epochserve.proto.v1 import common_pb2
from epochserve.router.httpfront.backend import Backend
from epochserve.router.httpfront.channel import Channel
from epochserve.router.httpfront.codec import Codec
from epochserve.router.httpfront.samples import Piece, SampleText
from epochserve.router.httpfront.translate import Translated
from epochserve.router.waiting import Deadline

_QUEUE_SIZE = 64  # messages held for a slow client before the worker stream waits
_MAX_COALESCING_TURNS = 8  # event-loop turns a busy router gives a stream's producers per event
_END = object()


class Generation:
    def __init__(self, backend: Backend, translated: Translated, codec: Codec, deadline: Deadline) -> None:
        self.backend = backend
        self.request = translated.request
        self.samples = [
            SampleText(i, codec.decode, translated.stops, translated.is_score_only)
            for i in range(translated.n)
        ]
        self.deadline = deadline
        self.policy_version: int | None = None  # of the first message (the flow checks the others)
        self._queue: Channel[object] = Channel(_QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None
        self._first: object = None
        self._held: object = None  # the end or an error, met while draining: next _next()'s answer
        self._is_aborting = False

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_generated_tokens(self) -> int:
        return sum(sample.num_tokens for sample in self.samples)

    async def start(self) -> None:
        """Start the request; return once its first message came. Raises what the request failed
        with before that."""
        self._task = asyncio.create_task(self._run())
        self._first = await self._next()
        if isinstance(self._first, common_pb2.GenerateResponse):  # known before any piece is read
            self.policy_version = self._first.policy_version

    async def pieces(self) -> AsyncIterator[Piece]:
        """Every sample's pieces in arrival order, each sample ending with a finish_reason. Raises
        what the request ends with. Leaving early cancels the request (the worker frees it)."""
        async for batch in self.batches():
            for piece in batch:
                yield piece

    async def batches(self) -> AsyncIterator[list[Piece]]:
        """The pieces of everything queued at each wake-up: at most one per sample. Raises what the
        request ends with. Leaving early cancels the request (the worker frees it)."""
        assert self._task is not None, "start() first"
        try:
            message = self._first
            while message is not _END:
                batch = self._pieces_of(await self._coalesced(message))
                if batch:
                    yield batch
                await self._abort_if_all_stopped()
                message = await self._next()
        finally:
            if not self._task.done():
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task

    async def _run(self) -> None:
        try:
            await self.backend.generate(self.request, self.deadline, self._queue.put)
        except Exception as exc:
            await self._queue.put(exc)
        else:
            await self._queue.put(_END)

    async def _next(self) -> object:
        item, self._held = self._held, None
        if item is None:
            item = await self._queue.get()
        if isinstance(item, Exception):
            raise item
        return item

    async def _coalesced(self, message: object) -> list[common_pb2.GenerateResponse]:
        """`message` and what is queued behind it. A STREAM response then gives the producers that
        are ready to run a turn of the event loop, again while each turn brought more: an idle
        router (one turn brings nothing) sends at once, a busy one sends fewer, larger events."""
        assert isinstance(message, common_pb2.GenerateResponse)
        if self._held is not None:
            return [message]
        if self.request.output_mode == common_pb2.OUTPUT_MODE_FINAL:
            items = self._queue.take_all()
        else:
            items = await self._queue.take_settled(_MAX_COALESCING_TURNS, _is_last)
        if items and _is_last(items[-1]):  # always the request task's last item
            self._held = items.pop()
        return [message, *items]  # type: ignore[list-item]

    def _pieces_of(self, messages: list[common_pb2.GenerateResponse]) -> list[Piece]:
        if self.policy_version is None:
            self.policy_version = messages[0].policy_version
        # By sample, in order of arrival: its messages' tokens merged into one chunk (protobuf
        # concatenates the repeated fields in C; one conversion to Python lists per piece, not
        # per message), and its finish reason when the worker's finish came.
        chunks: dict[int, list[common_pb2.GenerateChunk]] = {}
        finishes: dict[int, int] = {}
        for message in messages:
            index = message.sample_index
            if message.WhichOneof("payload") == "finish":
                finish = message.finish
                finishes[index] = finish.finish_reason
                chunk = finish.output
            else:
                chunk = message.chunk  # read-only: an empty default when unset
            sample_chunks = chunks.get(index)
            if sample_chunks is None:
                chunks[index] = [chunk]
            else:
                sample_chunks.append(chunk)
        pieces = (self.samples[i].add(_merged(c), finishes.get(i)) for i, c in chunks.items())
        return [piece for piece in pieces if piece is not None and not piece.is_empty]

    async def _abort_if_all_stopped(self) -> None:
        ended = all(s.finish_reason is not None for s in self.samples)
        if self._is_aborting or not ended or all(s.has_worker_finished for s in self.samples):
            return
        assert self._task is not None
        if not self._task.done():
            self._is_aborting = True
            await self.backend.abort(self.request_id)


def _is_last(item: object) -> bool:
    """The end or an error: the last item the request's task queues."""
    return not isinstance(item, common_pb2.GenerateResponse)


def _merged(chunks: list[common_pb2.GenerateChunk]) -> common_pb2.GenerateChunk:
    """One chunk with the tokens of `chunks`, in order (MergeFrom concatenates repeated fields)."""
    if len(chunks) == 1:
        return chunks[0]
    merged = common_pb2.GenerateChunk()
    for chunk in chunks:
        merged.MergeFrom(chunk)
    return merged

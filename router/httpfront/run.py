"""Run one GenerateRequest through the backend and turn its messages into Pieces of text.

The request runs in a task of its own that hands each message over a small queue (so a slow HTTP
client slows the worker stream down, as a slow gRPC client does). A stream's headers go out only
once its first message came: until then every failure (validation, a full queue, no worker, the
deadline) is still an HTTP status. When every sample matched a stop string while the worker still
generates, the request is aborted on it (router/aborting.py), the same as a gRPC Abort.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from epochserve.proto.results import tokens_of
from epochserve.proto.v1 import common_pb2
from epochserve.router.httpfront.backend import Backend
from epochserve.router.httpfront.codec import Codec
from epochserve.router.httpfront.samples import Piece, SampleText
from epochserve.router.httpfront.translate import Translated
from epochserve.router.waiting import Deadline

_QUEUE_SIZE = 16
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
        self._queue: asyncio.Queue[object] = asyncio.Queue(_QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None
        self._first: object = None
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
        assert self._task is not None, "start() first"
        try:
            message = self._first
            while message is not _END:
                assert isinstance(message, common_pb2.GenerateResponse)
                for piece in self._pieces_of(message):
                    yield piece
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
        item = await self._queue.get()
        if isinstance(item, Exception):
            raise item
        return item

    def _pieces_of(self, message: common_pb2.GenerateResponse) -> list[Piece]:
        if self.policy_version is None:
            self.policy_version = message.policy_version
        sample = self.samples[message.sample_index]
        pieces = [sample.add(tokens_of(message))]
        if message.HasField("finish"):
            pieces.append(sample.finish(message.finish.finish_reason))
        return [
            p
            for p in pieces
            if p is not None and (p.token_ids or p.text or p.finish_reason or p.prompt_logprobs)
        ]

    async def _abort_if_all_stopped(self) -> None:
        ended = all(s.finish_reason is not None for s in self.samples)
        if self._is_aborting or not ended or all(s.has_worker_finished for s in self.samples):
            return
        assert self._task is not None
        if not self._task.done():
            self._is_aborting = True
            await self.backend.abort(self.request_id)

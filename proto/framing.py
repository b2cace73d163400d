"""The session link's wire format: Worker.Session's protobuf messages on a plain byte stream.

Why: a router forwards every message of every request through its worker's Session. Over gRPC each
message costs a trip through gRPC's core, its completion-queue thread and an event-loop wake-up on
both ends; on a 2-core machine that was most of the latency the router adds (docs/benchmarks.md,
W4). Over one TCP (or TLS) connection with an asyncio protocol, a read that brings many frames costs
one callback.

Wire: each side first sends MAGIC, then frames — a 4-byte big-endian payload length and the
serialized message (SessionRequest from the router, SessionResponse from the worker). A peer that
does not open with MAGIC, or a frame over MAX_FRAME_BYTES, is not a session link: the connection is
dropped (FramingError).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Generic, TypeVar, cast

from google.protobuf.message import DecodeError, Message

MAGIC = b"EPSLINK1"  # the link's name and wire version
MAX_FRAME_BYTES = 64 << 20  # the gRPC services' message limit
_LENGTH = struct.Struct(">I")

M = TypeVar("M", bound=Message)


class FramingError(Exception):
    """The peer broke the wire format (module docstring)."""


def encode(message: Message) -> bytes:
    payload = message.SerializeToString()
    return _LENGTH.pack(len(payload)) + payload


class FrameDecoder:
    """Bytes in, whole payloads out: `feed` keeps a partial frame for the next call."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.has_magic = False

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        start = 0
        if not self.has_magic:
            if len(buffer) < len(MAGIC):
                if not MAGIC.startswith(bytes(buffer)):
                    raise FramingError(f"the peer does not speak the session link (sent {bytes(buffer)!r})")
                return []
            if buffer[: len(MAGIC)] != MAGIC:
                raise FramingError(f"the peer does not speak the session link (sent {bytes(buffer[:8])!r})")
            self.has_magic = True
            start = len(MAGIC)
        payloads = []
        while len(buffer) - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, start)
            if length > MAX_FRAME_BYTES:
                raise FramingError(f"a frame of {length} bytes is over the {MAX_FRAME_BYTES}-byte limit")
            end = start + _LENGTH.size + length
            if len(buffer) < end:
                break
            payloads.append(bytes(buffer[start + _LENGTH.size : end]))
            start = end
        del buffer[:start]
        return payloads


class FramedLink(asyncio.Protocol, Generic[M]):
    """One end of a session link, for loop.create_connection / create_server.

    Incoming messages go to `on_message` as they are parsed; `on_lost(why)` is called once when the
    connection ends for any reason (after which `send` raises ConnectionError). `send` queues a
    frame without waiting; `drain()` waits while the transport's buffer is over its high-water
    mark (the peer reads slower than we write). `handshake` resolves once the peer's MAGIC arrived.
    """

    def __init__(
        self,
        parse: Callable[[bytes], M],
        on_message: Callable[[M], None],
        on_lost: Callable[[str], None],
    ) -> None:
        self._parse = parse
        self._on_message = on_message
        self._on_lost = on_lost
        self._decoder = FrameDecoder()
        self._transport: asyncio.Transport | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._lost_why: str | None = None
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last_received = asyncio.get_running_loop().time()

    @property
    def is_lost(self) -> bool:
        return self._lost_why is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass
        self._transport.write(MAGIC)

    def data_received(self, data: bytes) -> None:
        self.last_received = asyncio.get_running_loop().time()
        try:
            payloads = self._decoder.feed(data)
            messages = [self._parse(payload) for payload in payloads]
        except (FramingError, DecodeError) as exc:
            self.close(f"broken link: {exc}")
            return
        if self._decoder.has_magic and not self.handshake.done():
            self.handshake.set_result(None)
        for message in messages:
            self._on_message(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose("the peer closed the connection" if exc is None else f"connection lost: {exc!r}")

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def send(self, message: Message) -> None:
        if self._transport is None or self._lost_why is not None:
            raise ConnectionError(f"session link closed ({self._lost_why or 'not connected'})")
        self._transport.write(encode(message))

    async def drain(self) -> None:
        await self._can_write.wait()

    def close(self, why: str = "closed by this side") -> None:
        """Drop the connection at once (unsent frames included) and report `why` as its end."""
        self._lose(why)
        if self._transport is not None:
            self._transport.abort()

    def _lose(self, why: str) -> None:
        if self._lost_why is not None:
            return
        self._lost_why = why
        self._can_write.set()  # wake drain(): the next send raises
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError(why))
            self.handshake.exception()  # retrieved: nobody may be waiting for it
        self._on_lost(why)

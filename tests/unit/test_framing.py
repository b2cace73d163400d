"""The session link's wire format (epochserve.proto.framing): frames cut anywhere by TCP come out
whole and in order, a peer that is not a session link is dropped, and FramedLink over a real
loopback connection delivers messages, reports its end once, and refuses to send afterwards."""

import asyncio
import random

import pytest

from epochserve.proto.framing import MAGIC, MAX_FRAME_BYTES, FrameDecoder, FramedLink, FramingError, encode
from epochserve.proto.v1 import common_pb2, worker_pb2


def response(stream_id: int, tokens: int) -> worker_pb2.SessionResponse:
    chunk = common_pb2.GenerateChunk(token_ids=list(range(tokens)), logprobs=[-0.5] * tokens)
    return worker_pb2.SessionResponse(
        stream_id=stream_id, response=common_pb2.GenerateResponse(request_id=f"r{stream_id}", chunk=chunk)
    )


def test_frames_cut_at_every_boundary_come_out_whole_and_in_order():
    messages = [response(i, tokens) for i, tokens in enumerate([0, 1, 7, 300, 2])]
    wire = MAGIC + b"".join(encode(m) for m in messages)
    rng = random.Random(0)
    for _ in range(50):
        decoder, payloads, at = FrameDecoder(), [], 0
        while at < len(wire):
            step = rng.choice([1, 2, 3, 5, 64, 1000])
            payloads += decoder.feed(wire[at : at + step])
            at += step
        assert [worker_pb2.SessionResponse.FromString(p) for p in payloads] == messages
    whole = FrameDecoder().feed(wire)  # and all at once
    assert len(whole) == len(messages)


def test_an_empty_message_is_a_frame_of_length_zero():
    decoder = FrameDecoder()
    assert decoder.feed(MAGIC + encode(worker_pb2.SessionRequest())) == [b""]


@pytest.mark.parametrize("opening", [b"PRI * HTTP/2.0\r\n", b"GET ", b"EPSLINK2", b"X"])
def test_a_peer_that_does_not_open_with_magic_is_refused(opening):
    with pytest.raises(FramingError, match="does not speak the session link"):
        FrameDecoder().feed(opening)


def test_a_frame_over_the_limit_is_refused_before_it_is_buffered():
    header = (MAX_FRAME_BYTES + 1).to_bytes(4, "big")
    with pytest.raises(FramingError, match="over the"):
        FrameDecoder().feed(MAGIC + header)


async def _pair():
    """(server-side link, client-side link, received-by-server list, lost reasons) over loopback."""
    loop = asyncio.get_running_loop()
    received: list[worker_pb2.SessionRequest] = []
    lost: dict[str, list[str]] = {"server": [], "client": []}
    accepted: list[FramedLink] = []

    def accept() -> FramedLink:
        link = FramedLink(worker_pb2.SessionRequest.FromString, received.append, lost["server"].append)
        accepted.append(link)
        return link

    server = await loop.create_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = FramedLink(worker_pb2.SessionResponse.FromString, lambda m: None, lost["client"].append)
    await loop.create_connection(lambda: client, "127.0.0.1", port)
    await asyncio.wait_for(client.handshake, 5)
    server.close()
    return accepted[0], client, received, lost


def test_a_link_carries_messages_both_ways_and_reports_its_end_once():
    async def run():
        _, client, received, lost = await _pair()
        requests = [
            worker_pb2.SessionRequest(stream_id=i, cancel=worker_pb2.SessionCancel(reason="x" * i))
            for i in range(1, 200)
        ]
        for request in requests:
            client.send(request)
        await client.drain()
        for _ in range(100):
            if len(received) == len(requests):
                break
            await asyncio.sleep(0.01)
        assert received == requests
        client.close("test done")
        for _ in range(100):
            if lost["server"]:
                break
            await asyncio.sleep(0.01)
        client.close("again")  # a second close reports nothing new
        with pytest.raises(ConnectionError, match="test done"):
            client.send(requests[0])
        return lost

    lost = asyncio.run(run())
    assert lost["client"] == ["test done"]
    assert len(lost["server"]) == 1 and "closed" in lost["server"][0]


def test_garbage_after_the_greeting_drops_the_link():
    async def run():
        _, client, received, lost = await _pair()
        client._transport.write(b"\x00\x00\x00\x03\xff\xff\xff")  # a frame that is not a SessionRequest
        for _ in range(100):
            if lost["server"]:
                break
            await asyncio.sleep(0.01)
        return received, lost

    received, lost = asyncio.run(run())
    assert received == []
    assert lost["server"] and lost["server"][0].startswith("broken link")


def test_a_listener_that_is_not_a_link_fails_the_handshake():
    async def run():
        async def silent_http(reader, writer):
            writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            await writer.drain()

        server = await asyncio.start_server(silent_http, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        lost: list[str] = []
        client = FramedLink(worker_pb2.SessionResponse.FromString, lambda m: None, lost.append)
        await asyncio.get_running_loop().create_connection(lambda: client, "127.0.0.1", port)
        with pytest.raises(ConnectionError, match="does not speak the session link"):
            await asyncio.wait_for(client.handshake, 5)
        server.close()
        return lost

    assert len(asyncio.run(run())) == 1

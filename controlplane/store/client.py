"""EtcdStore: the asyncio etcd client of the control plane, speaking our error types.

Built on `aetcd` for key/value, lease and transaction calls (its channel setup is replaced to add
TLS and several endpoints) and on the raw etcd Watch stream, so that the events of one transaction
arrive together. Failure modes:
- etcd unreachable or too slow (each request has `request_timeout`) → StoreUnavailableError;
- a write bound to a lease that no longer exists → LeaseLostError;
- etcd refusing a request for another reason → StoreRequestError.
A guarded transaction whose guard fails returns False (a lost race is not an error).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aetcd
import grpc
from aetcd import rpc

from epochserve.controlplane.store.etcd_config import EtcdConfig
from epochserve.errors import LeaseLostError, StoreRequestError, StoreUnavailableError
from epochserve.tls import read_pem

# Reconnect quickly after an etcd restart (gRPC's default backoff grows to two minutes), and ping
# idle connections so that a dead peer is noticed on long watch streams. etcd refuses pings more
# often than every 5 s, hence 10 s.
_CHANNEL_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
}


@dataclass(frozen=True, slots=True)
class Entry:
    """One key as etcd stores it. `lease` is 0 for keys bound to no lease."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A put (entry holds the new value) or a delete (entry.value is empty) seen by a watch."""

    is_delete: bool
    entry: Entry


class _Client(aetcd.Client):
    """aetcd's client with our own channel: TLS, a multi-address target, fast reconnects."""

    def __init__(self, config: EtcdConfig) -> None:
        super().__init__(timeout=config.request_timeout, options=_CHANNEL_OPTIONS)
        self._config = config

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        options = list(self._options.items())
        cfg = self._config
        if cfg.ca_file is None:
            self.channel = grpc.aio.insecure_channel(cfg.target(), options=options)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=read_pem(cfg.ca_file),
                private_key=read_pem(cfg.key_file) if cfg.key_file else None,
                certificate_chain=read_pem(cfg.cert_file) if cfg.cert_file else None,
            )
            self.channel = grpc.aio.secure_channel(cfg.target(), credentials, options=options)
        self.kvstub = rpc.KVStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._connected.set()


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn aetcd's and gRPC's exceptions into ours (see module docstring)."""
    try:
        yield
    except (aetcd.ConnectionFailedError, aetcd.ConnectionTimeoutError, aetcd.InternalError) as e:
        raise StoreUnavailableError(f"etcd {what}: {e}") from e
    except aetcd.ClientError as e:
        if "lease not found" in str(e):
            raise LeaseLostError(f"etcd {what}: the lease is gone") from e
        raise StoreRequestError(f"etcd {what}: {e}") from e
    except grpc.aio.AioRpcError as e:
        if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise StoreUnavailableError(f"etcd {what}: {e.details()}") from e
        raise StoreRequestError(f"etcd {what}: {e.code().name} {e.details()}") from e
    except TimeoutError as e:
        raise StoreUnavailableError(f"etcd {what}: timed out") from e


def _entry(kv: Any) -> Entry:
    return Entry(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.lease)


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with `prefix`."""
    return bytes(aetcd.utils.prefix_range_end(prefix))


class EtcdStore:
    """Connection to one etcd cluster. Use from one event loop; methods are coroutine-safe."""

    def __init__(self, config: EtcdConfig) -> None:
        self.config = config
        self._client = _Client(config)

    async def connect(self) -> None:
        """Open the channel. It connects lazily, so this succeeds even while etcd is down."""
        await self._client.connect()

    async def close(self) -> None:
        await self._client.close()

    async def get(self, key: bytes) -> Entry | None:
        with _translated("get"):
            got = await self._client.get(key)
        return None if got is None else _entry(got)

    async def get_prefix(self, prefix: bytes) -> tuple[int, list[Entry]]:
        """Every key under `prefix` in key order, and the store revision they were read at."""
        with _translated("range"):
            got = await self._client.get_prefix(prefix)
        return got.header.revision, [_entry(kv) for kv in got]

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Unconditional write; returns its revision. Only for keys nobody else writes."""
        with _translated("put"):
            done = await self._client.put(key, value, lease=lease or None)
        return int(done.header.revision)

    async def txn(self, guards: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()) -> bool:
        """One transaction: True when every guard held and `success` was applied, else False."""
        with _translated("txn"):
            ok, _ = await self._client.transaction(
                compare=list(guards), success=list(success), failure=list(failure)
            )
        return bool(ok)

    async def grant_lease(self, ttl: int) -> int:
        with _translated("lease grant"):
            lease = await self._client.lease(ttl)
        return int(lease.id)

    async def refresh_lease(self, lease_id: int) -> int:
        """One keepalive; returns the TTL left (0 when the lease no longer exists)."""
        with _translated("lease keepalive"):
            reply = await self._client.refresh_lease(lease_id)
        return 0 if reply is None else int(reply.TTL)

    async def revoke_lease(self, lease_id: int) -> None:
        """Revoke a lease and delete its keys; a lease that is already gone is not an error."""
        with contextlib.suppress(LeaseLostError), _translated("lease revoke"):
            await self._client.revoke_lease(lease_id)

    async def watch(
        self, key: bytes, range_end: bytes, start_revision: int
    ) -> AsyncIterator[list[WatchEvent]]:
        """Events on [key, range_end) from `start_revision` on, one list per etcd response (a
        transaction's events arrive in one list); the first list is empty and means the watch is
        established. Raises StoreUnavailableError when the stream breaks or the start revision was
        compacted: the caller re-reads and watches again. Never ends on its own."""
        await self._client.connect()
        stop = asyncio.Event()
        create = rpc.WatchCreateRequest(key=key, range_end=range_end, start_revision=start_revision)

        async def requests() -> AsyncIterator[Any]:
            yield rpc.WatchRequest(create_request=create)
            await stop.wait()  # the request side stays open for the life of the watch

        call = rpc.WatchStub(self._client.channel).Watch(requests())
        try:
            with _translated("watch"):
                async for response in call:
                    if response.compact_revision:
                        raise StoreUnavailableError(f"etcd watch: revision {start_revision} was compacted")
                    if response.canceled:
                        raise StoreUnavailableError(f"etcd watch canceled: {response.cancel_reason}")
                    yield [WatchEvent(e.type == rpc.Event.DELETE, _entry(e.kv)) for e in response.events]
            raise StoreUnavailableError("etcd watch: the stream ended")
        finally:
            stop.set()
            call.cancel()


# Guards and operations for EtcdStore.txn. Callers build them here so that only this module
# knows aetcd's transaction types.
_tx = aetcd.Transactions()


def created_at(key: bytes, revision: int) -> Any:
    """Guard: `key` exists and was created at `revision` (0 means: does not exist)."""
    return _tx.create(key) == revision


def modified_at(key: bytes, revision: int) -> Any:
    """Guard: `key` was last written at `revision` (0 means: does not exist)."""
    return _tx.mod(key) == revision


def unchanged_since(prefix: bytes, revision: int) -> Any:
    """Guard: no key under `prefix` was written after `revision` (deletions are not seen)."""
    return _tx.mod(prefix, range_end=prefix_end(prefix)) < revision + 1


def put_op(key: bytes, value: bytes, lease: int = 0) -> Any:
    return _tx.put(key, value, lease=lease or None)


def delete_op(key: bytes) -> Any:
    return _tx.delete(key)

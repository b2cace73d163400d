"""Helpers of the router integration tests: a local cluster with routers, policy versions with
different weights, rollouts, waiting, worker info, Prometheus scrapes, a TLS front for a worker."""

from __future__ import annotations

import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch
from fixtures.engine import hf_next_token_logits
from fixtures.etcd import TcpProxy
from fixtures.grpc_client import worker_info
from prometheus_client.parser import text_string_to_metric_families

from epochserve.app.local.cluster import LocalCluster, LocalClusterSpec
from epochserve.app.local.processes import ManagedProcess
from epochserve.client.publisher import PolicyPublisher
from epochserve.proto.results import Sample

WORKER_ARGS = ("--block-size", "4")
# Registrations keep the production lease unless a test kills a process and waits for its lease to
# lapse (FAST_LEASE_TTL): a 2 s lease can lapse while a loaded 2-core CI machine starves a keepalive.
LEASE_TTL = 10
FAST_LEASE_TTL = 2
PROMPT = [5, 17, 33, 9, 100, 200, 300, 7, 8, 11]


def cluster_spec(
    tmp_path: Path,
    model_dir: Path,
    *,
    num_workers: int = 2,
    num_routers: int = 1,
    worker_args: tuple[str, ...] = (),
    router_args: tuple[str, ...] = (),
    lease_ttl: int = LEASE_TTL,
) -> LocalClusterSpec:
    lease = ("--lease-ttl", str(lease_ttl))
    return LocalClusterSpec(
        model_dir=model_dir,
        workdir=tmp_path,
        num_workers=num_workers,
        worker_args=(*WORKER_ARGS, *lease, *worker_args),
        fast_etcd=True,
        num_routers=num_routers,
        router_args=(*lease, *router_args),
    )


def publish(
    cluster: LocalCluster,
    version: int,
    model,
    root: Path,
    drain: str = "finish",
    wait_for: str = "done",
    drain_deadline: float | None = None,
):
    """Roll `model`'s weights out as `version` (checkpoint under root); returns the PublishResult."""
    publisher = PolicyPublisher(cluster.admin_address, cluster.token, timeout=120)
    path = root / f"v{version}"
    if not path.is_dir():
        publisher.save_checkpoint(version, model.state_dict(), path, config_from=root / "A")
    return publisher.publish_checkpoint(
        version, path, drain=drain, wait_for=wait_for, drain_deadline=drain_deadline
    )


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, pause: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(pause)


def wait_worker_idle(address: str, free_blocks: int, timeout: float = 30.0) -> None:
    """Until the worker runs nothing and its free KV blocks are back to `free_blocks`."""

    def idle() -> bool:
        info = worker_info(address)
        return (
            info.num_running_seqs + info.num_waiting_seqs == 0
            and info.kv_cache.num_blocks_free == free_blocks
        )

    wait_until(idle, timeout, f"{address} to free its sequences")


def scrape(router: ManagedProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The router's Prometheus samples: (sample name, sorted labels) → value."""
    url = f"http://127.0.0.1:{router.info['metrics_port']}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def max_logprob_gap(model, prompt: list[int], sample: Sample) -> float:
    """Largest |Δ| between a sample's processed logprobs and `model`'s (temperature 1, no filters)."""
    tokens = list(sample.token_ids)
    reference = torch.log_softmax(hf_next_token_logits(model, prompt, tokens), dim=-1)
    expected = reference[torch.arange(len(tokens)), torch.tensor(tokens)]
    return (expected - torch.tensor(sample.processed_logprobs)).abs().max().item()


class TlsFront(TcpProxy):
    """A worker that serves TLS, as far as its clients can tell: accepts TLS (ALPN h2) on `port`
    and forwards the plaintext bytes to `target` (set once the worker is up). Daemon threads."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # before the accept thread starts
        self.context.load_cert_chain(cert, key)
        self.context.set_alpn_protocols(["h2"])
        self.num_connections = 0
        super().__init__(target_port=0)

    def set_target(self, port: int) -> None:
        self._target = ("127.0.0.1", port)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            secure = self.context.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):
            client.close()
            return
        upstream = socket.create_connection(self._target)
        with self._lock:
            self._open.update((secure, upstream))
        self.num_connections += 1
        threading.Thread(target=self._pipe, args=(upstream, secure), daemon=True).start()
        self._pipe(secure, upstream)

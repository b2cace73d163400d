"""Router → worker over TLS (`--worker-tls-ca`). Workers serve plaintext today, so the worker here
advertises the address of a TLS front (routerkit.TlsFront) that forwards to it: the router's
side — a TLS channel that checks the worker's certificate — is what is tested."""

from __future__ import annotations

from integration.controlplane.certs import self_signed
from routerkit import PROMPT, TlsFront, cluster_spec

from epochserve.app.local.cluster import LocalCluster
from epochserve.client.generation import GenerationClient
from epochserve.sampling import SamplingParams


def test_the_router_reaches_workers_over_tls(versions, tmp_path):
    a_dir, _models, _root = versions
    cert = self_signed(tmp_path, "worker")
    front = TlsFront(cert.cert, cert.key)
    advertised = front.endpoint
    spec = cluster_spec(
        tmp_path, a_dir, num_workers=1, num_routers=0, worker_args=("--advertise-address", advertised)
    )
    with LocalCluster(spec) as cluster:
        front.set_target(int(cluster.workers[0].info["port"]))
        router = cluster.add_router("--worker-tls-ca", str(cert.cert))
        with GenerationClient(router.address, timeout=60) as client:
            result = client.generate(PROMPT, SamplingParams(max_tokens=4), n=2)
        assert [len(s.token_ids) for s in result.samples] == [4, 4]
        assert front.num_connections >= 1, "the router dialled the worker through TLS"

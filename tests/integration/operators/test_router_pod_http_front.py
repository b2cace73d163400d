"""A router started exactly as the operator's Deployment starts it (its args, its volumes laid out
by pod_files_testkit) against a real etcd and a real coordinator: its HTTP front reads SmolLM2's
tokenizer from the mounted model claim and rolls out through the Admin address and mounted token.
Only the network differs from a pod: listen ports are free ones and the coordinator Service's DNS
name is the coordinator process's address."""

from __future__ import annotations

import asyncio
import copy
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from crd_schema_testkit import as_stored, example
from fakes import FakeWorker
from fixtures.etcd import EtcdCluster
from fixtures.processes import running_epochctl
from harness import TOKEN, CoordinatorProcess, cluster_state, run, wait_until
from pod_files_testkit import claim_dir, container_args

from epochserve.operators.builders.cluster import build_cluster
from epochserve.operators.spec import parse_cluster

HTTP_TIMEOUT_S = 60.0
# Flags whose values name the pod's network; replaced by a loopback one (values: new value).
LOOPBACK = {"--host": "127.0.0.1", "--port": "0", "--metrics-port": "0", "--http-port": "0"}


def _router_pod(etcd: EtcdCluster) -> tuple[dict[str, Any], dict[str, str]]:
    """The operator's router pod spec for the example EpochCluster on this etcd, and its env."""
    obj = copy.deepcopy(example("epochcluster.yaml"))
    obj["spec"]["etcd"] = {"mode": "External", "endpoints": [etcd.server.endpoint]}
    objects = build_cluster(parse_cluster(as_stored(obj), None))
    (router,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "demo-router"]
    (config,) = [o for o in objects if o["kind"] == "ConfigMap"]
    env = {"ETCD_ENDPOINTS": config["data"]["etcd-endpoints"], "EPOCHSERVE_CLUSTER": etcd.cluster}
    return router["spec"]["template"]["spec"], env


def _on_loopback(args: list[str], admin_address: str) -> list[str]:
    replaced = {**LOOPBACK, "--admin-address": admin_address}
    return [replaced.get(args[i - 1], arg) if i else arg for i, arg in enumerate(args)]


def _call(url: str, body: dict[str, Any] | None = None, token: str | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_router_pod_reads_the_model_tokenizer_and_rolls_out_through_the_admin_token(
    etcd, smollm2_dir: Path, tmp_path: Path
):
    pod, env = _router_pod(etcd)
    root = tmp_path / "pod"
    claim_dir(root, "models").mkdir(parents=True)
    (claim_dir(root, "models") / "smollm2-135m-instruct").symlink_to(smollm2_dir)
    secrets = {"epochserve-admin-token": {"token": TOKEN + "\n"}}
    coordinator = CoordinatorProcess(etcd, "coordinator-0", tmp_path)
    try:
        run(coordinator.wait_serving())
        args = _on_loopback(
            container_args(pod, pod["containers"][0], root, secrets, env), coordinator.address
        )
        with running_epochctl(args, tmp_path, "router", timeout=120.0) as router:
            url = f"http://127.0.0.1:{router.info['http_port']}"
            status, models = _call(f"{url}/v1/models")
            assert status == 200 and [m["id"] for m in models["data"]] == ["demo"]
            # Text is tokenized (a front without a tokenizer refuses it at once with 400) and the
            # request waits for a worker; none serves yet, so it ends at its own deadline.
            completion = {"model": "demo", "prompt": "Hi", "max_tokens": 1, "timeout": 1.0}
            status, reply = _call(f"{url}/v1/completions", completion)
            assert status == 504, reply
            assert "no tokenizer" not in router.log()
            run(_roll_out_through_http(etcd, url))
    finally:
        coordinator.stop()


async def _roll_out_through_http(etcd: EtcdCluster, url: str) -> None:
    async with FakeWorker(etcd, "worker-0"):
        update = {"model_path": "/models/smollm2-v1", "version": 1, "drain": "finish"}
        status, refused = await asyncio.to_thread(_call, f"{url}/update_weights_from_disk", update, "wrong")
        assert status == 401, refused
        status, reply = await asyncio.to_thread(_call, f"{url}/update_weights_from_disk", update, TOKEN)
        assert status == 200 and reply["success"] is True and reply["weight_version"] == "1", reply
        state = await cluster_state(etcd)  # the route went through the Admin API: a real rollout record
        assert state.epoch is not None and state.epoch.value.version == 1
        assert state.rollouts[1].value.source == "/models/smollm2-v1"

        async def router_serves_v1() -> bool:
            status, version = await asyncio.to_thread(_call, f"{url}/get_weight_version")
            return status == 200 and version.get("weight_version") == "1"

        await wait_until(router_serves_v1, 10.0, "the router to report weight version 1")

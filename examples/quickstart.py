"""`make run`: a whole epochserve cluster on this machine, a generation, a weight rollout, another.

1. Prepares the bundled SmolLM2-135M-Instruct (first run only) and starts a local cluster as real
   processes: etcd, a coordinator, a worker serving the model (policy version 0) and a router.
2. Generates through the router and prints tokens, processed logprobs and the policy version.
3. Plays the trainer: saves "version 1" (the weights with a small change to the final norm) as a
   checkpoint with its manifest and publishes it; the call returns once every worker serves it.
4. Generates again: the same request now runs on version 1, and the response says so.
Everything is stopped at the end (also on Ctrl-C).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file

from epochserve.app.local.cluster import LocalCluster, LocalClusterSpec
from epochserve.client.generation import GenerationClient
from epochserve.client.publisher import PolicyPublisher
from epochserve.sampling import SamplingParams
from epochserve.worker.models.bundled import prepare_smollm2

PROMPT = "The three primary colors are"


def show(title: str, client: GenerationClient) -> None:
    result = client.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=12), timeout=300)
    sample = result.samples[0]
    print(f"\n== {title}: policy version {result.policy_version}, worker {sample.worker_id}")
    print("  token_ids:", sample.token_ids)
    print("  processed logprobs:", [round(x, 4) for x in sample.processed_logprobs])


def main() -> int:
    model_dir = prepare_smollm2(progress=True)
    with tempfile.TemporaryDirectory(prefix="epochserve-quickstart-") as tmp:
        workdir = Path(tmp)
        spec = LocalClusterSpec(model_dir=model_dir, workdir=workdir, num_workers=1, num_routers=1)
        print(f"starting etcd, coordinator, a worker and a router (logs in {workdir}) ...", flush=True)
        with LocalCluster(spec) as cluster, GenerationClient(cluster.router_address) as client:
            show("version 0", client)
            weights = load_file(str(model_dir / "model.safetensors"))
            weights["model.norm.weight"] = weights["model.norm.weight"] * 1.05  # the "training step"
            publisher = PolicyPublisher(cluster.admin_address, cluster.token)
            checkpoint = publisher.save_checkpoint(1, weights, workdir / "v1", config_from=model_dir)
            print("\n== publishing version 1 (stage, verify, commit, swap) ...", flush=True)
            outcome = publisher.publish_checkpoint(1, checkpoint, wait_for="done")
            print(f"   rollout {outcome.phase}; manifest {outcome.manifest_checksum[:16]}...")
            show("version 1", client)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make run`: start a worker on the bundled SmolLM2 and generate from it, then stop it.

Runs real processes: `epochctl worker` (the bundled model is prepared on first use) and
`epochctl generate`, once greedy and once sampled with n=2, printing tokens, processed logprobs and
the policy version of every sample.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EPOCHCTL = [sys.executable, "-m", "epochserve.controlplane.cli.main"]
PROMPT = "The three primary colors are"


def main() -> int:
    from epochserve.worker.models.bundled import prepare_smollm2

    model_dir = prepare_smollm2(progress=True)
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready.json"
        worker = subprocess.Popen(
            [*EPOCHCTL, "worker", "--model", str(model_dir), "--port", "0", "--ready-file", str(ready)]
        )
        try:
            deadline = time.monotonic() + 300
            while not (ready.is_file() and ready.read_text()):
                if worker.poll() is not None or time.monotonic() > deadline:
                    print("worker failed to start", file=sys.stderr)
                    return 1
                time.sleep(0.2)
            target = "127.0.0.1:{port}".format(**json.loads(ready.read_text()))
            print(f"\n== worker on {target}; greedy ==", flush=True)
            common = [*EPOCHCTL, "generate", "--target", target, "--prompt", PROMPT, "--max-tokens", "16"]
            subprocess.run([*common, "--temperature", "0"], check=True)
            print("\n== sampled, n=2, seed 7 ==", flush=True)
            subprocess.run(
                [*common, "--temperature", "0.8", "--top-p", "0.95", "--n", "2", "--seed", "7"], check=True
            )
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""epochserve: a serving cluster for RL rollouts with version-pure, fp32-processed logprobs.

This root package holds only what every part shares: the version and the error types.
The role folders (worker, controlplane, router, kernels, proto, operators, loadtest) install as
subpackages of this namespace; see docs/design.md §2 and pyproject.toml's package-dir mapping.
"""

__version__ = "0.1.0"

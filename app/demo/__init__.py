"""The RL demo: a real RL loop on SmolLM2 through the cluster, extra load, and its summary.

examples/rl_loop.py runs the loop against a cluster; `epochctl demo` brings one up and runs it all.
"""

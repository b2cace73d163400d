"""Recompute a cluster's logprobs with transformers and measure the train-inference mismatch.

Used by `epochctl verify` (audit logs or live requests) and by the RL loop (examples/rl_loop.py).
"""

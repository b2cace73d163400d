"""Triton kernels, each with a pure-PyTorch reference beside it. Plain tensor functions only."""

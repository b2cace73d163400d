"""The router's HTTP front: OpenAI-compatible routes beside the gRPC Generation service (docs/http.md).

It translates HTTP requests into GenerateRequests and runs them through the very request path the
gRPC Generate handler uses (router/flow.py's RequestFlow: validation, admission and version
pinning, balancing, retries, metrics, audit); it routes nothing itself.
"""

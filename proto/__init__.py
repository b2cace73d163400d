"""gRPC contracts (package epochserve.v1). The .proto sources and generated code live in v1/.

Regenerate with `python scripts/gen_proto.py`; tests/unit/test_proto_fresh.py fails when stale.
"""

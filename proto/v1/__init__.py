"""Generated code of the epochserve.v1 protos (scripts/gen_proto.py); do not edit by hand."""

"""Pure manifest builders: ClusterSpec in, Kubernetes objects (plain dicts) out."""

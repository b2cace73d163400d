"""Control plane: etcd keyspace, leases, election, rollout coordinator, Admin service, CLI."""

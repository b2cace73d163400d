"""Control plane: etcd keyspace, sessions, election, rollout coordinator, Admin service, CLI."""

"""The rollout coordinator: leader election, the rollout state machine, guarded writes, the process."""

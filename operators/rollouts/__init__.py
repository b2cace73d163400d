"""PolicyRollout: drive a weight-update rollout through the Admin API and mirror it into status."""

"""Router: the public Generation service, version-pinned admission and balancing."""

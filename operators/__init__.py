"""Kubernetes operator (kopf): reconcile logic and pure manifest builders."""

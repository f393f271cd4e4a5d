"""HTTP entrypoints shared by all planes (health, readiness, metrics)."""

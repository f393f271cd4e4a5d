"""Adapters of the durability module: imported only by the composition root."""

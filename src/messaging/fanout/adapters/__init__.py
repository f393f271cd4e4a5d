"""Adapters of the fanout module: imported only by the composition root."""

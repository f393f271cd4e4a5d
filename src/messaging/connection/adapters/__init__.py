"""Adapters of the connection module: imported only by the composition root."""

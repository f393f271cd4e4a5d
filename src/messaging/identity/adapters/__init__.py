"""Adapters of the identity module: imported only by the composition root."""

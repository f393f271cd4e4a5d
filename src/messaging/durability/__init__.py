"""Durability plane: message ingest and persistence (correctness first).

The only writer of messages and the only allocator of per-chat sequences.
"""

"""Shared low-level adapters: clients for the three external services and the table schema.

Only the composition root, the plane adapters and the operator CLI import this package
(import-linter ``protected`` contract).
"""

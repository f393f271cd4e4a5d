"""Cross-plane interfaces (small ``typing.Protocol``s), frozen data objects and wire frames.

Nothing here does I/O or imports an I/O library (import-linter ``forbidden`` contract).
"""

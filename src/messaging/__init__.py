"""A real-time messaging platform built as a distributed-systems lab."""

__version__ = "0.1.0"

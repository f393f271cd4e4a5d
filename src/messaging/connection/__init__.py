"""Connection plane: the WebSocket gateway (low latency, availability first).

Owns sockets, per-connection outbound queues and their limits. Holds no durable state.
"""

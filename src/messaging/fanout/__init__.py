"""Fanout plane: from the Kafka event log to the app processes that hold members' sockets."""

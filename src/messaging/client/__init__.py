"""Client library of the messaging platform: REST calls and the real-time WebSocket client.

- :class:`RestClient`: login (OTP), users, chats, history over REST.
- :class:`ChatClient`: protocol v1 (docs/protocol.md): authenticates, reconnects with backoff
  and jitter, syncs after every ``ready``, delivers each chat's messages in sequence order
  exactly once (:class:`ReorderBuffer`), closes gaps by syncing, acks what the application took,
  and resends unacknowledged sends with the same ``client_message_id``.
- :class:`History`: what the client sent, received, delivered and acked (for consistency checks).

Only ``messaging.protocol`` and ``messaging.domain`` are imported from the rest of the package.
"""

from messaging.client.connection import ChatClient, ClientOptions, ClientStats, SendResult
from messaging.client.errors import (
    AuthRejected,
    ClientApiError,
    ClientClosed,
    ClientError,
    SendExpired,
    SendRejected,
    SyncRejected,
)
from messaging.client.history import (
    AckedRecord,
    AckRecord,
    ConnectionEvent,
    History,
    ReceivedRecord,
    SendRecord,
)
from messaging.client.ordering import ReorderBuffer
from messaging.client.rest import ChatInfo, MessagePage, RestClient, Session, ws_url_for

__all__ = [
    "AckRecord",
    "AckedRecord",
    "AuthRejected",
    "ChatClient",
    "ChatInfo",
    "ClientApiError",
    "ClientClosed",
    "ClientError",
    "ClientOptions",
    "ClientStats",
    "ConnectionEvent",
    "History",
    "MessagePage",
    "ReceivedRecord",
    "ReorderBuffer",
    "RestClient",
    "SendExpired",
    "SendRecord",
    "SendRejected",
    "SendResult",
    "Session",
    "SyncRejected",
    "ws_url_for",
]

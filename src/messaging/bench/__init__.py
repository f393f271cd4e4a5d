"""Load tool and benchmarks: ``messaging bench SCENARIO`` (docs/benchmarks.md).

It drives the public protocol through :mod:`messaging.client` (REST login through the real OTP
flow, :class:`~messaging.client.ChatClient` over WebSocket), against app processes it starts
itself (``python -m messaging serve`` on free ports, private tables, topic and consumer group) or
an app given with ``--url``. In the same run it measures the raw limits of what the app is built
on, through the same client libraries: the DynamoDB API doing exactly the operations of one send
(ADR 0004), Kafka produce -> consume, and a bare Starlette WebSocket echo on one uvicorn process.
Every figure is reported with its ratio to its limit; the recorded histories go through the
consistency checker, and a violation fails the run.

Modules: ``command`` (arguments, orchestration), ``scenarios``, ``load`` (clients, open and
closed loops, recording), ``baselines``, ``apps`` (processes, tables, topic), ``population``
(users and chats), ``consistency`` (the checker adapter), ``report`` (JSON, markdown, charts),
``hist`` (HDR histograms), ``procstat`` (/proc), ``echo`` and ``sockets`` (helper processes).
"""

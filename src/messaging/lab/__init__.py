"""The lab console (``messaging lab``, ADR 0032): a page to break the system from the browser
and watch the guarantees hold. An operator tool beside ``bench`` and ``devstack``, outside the
planes: it starts app processes of its own, drives traffic through the bench's load engine,
injects the scenario tests' faults through the same functions (``messaging.devstack.faults``,
``messaging.devstack.stack``, ``messaging.devstack.toxiproxy``) and runs the consistency checker
over the recorded histories. Nothing in the planes imports it."""

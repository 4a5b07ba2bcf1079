"""Topic handlers, one module per bus topic (PROTOCOL.md §4): each parses the event, decides the recipients
through the session table's indexes and shapes each distinct frame once.

Each module exports ``validate(event)``, the topic's own shape check (raising
``wsgw.frames.MalformedEvent``, exactly when its handler would drop the event),
and a handler class with ``handle(event)``. ``endpoint`` is the ``/ws`` endpoint
whose sessions they deliver to.
"""

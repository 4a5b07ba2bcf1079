"""Chat on ``/chat`` (PROTOCOL.md §5).

``service`` is the endpoint (frame order, shutdown, bus events), ``actions`` its
five requests, ``requests`` reads client frames, ``membership`` knows the rooms
of this instance's sockets, ``presence`` who is in a room, ``sanitize`` removes
HTML from messages, ``model`` holds the data and the bus events; the stores:
``memory_store`` (embedded) and ``redis_store`` (shared, the one adapter here).
"""

"""Chat on ``/chat`` (PROTOCOL.md §5).

``service`` is the endpoint and its rules, ``requests`` reads client frames,
``presence`` keeps who is in a room, ``sanitize`` removes HTML from messages,
``model`` holds the data and the bus events; the stores: ``memory_store``
(embedded) and ``redis_store`` (shared, the one adapter here).
"""

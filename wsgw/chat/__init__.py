"""Chat on /chat (PROTOCOL.md §5): the rules and presence (``rooms``) over a store (``store``)."""

from wsgw.chat.rooms import ChatService, sanitize_markdown
from wsgw.chat.store import IChatStore, MemoryChatStore, RedisChatStore

__all__ = ["ChatService", "IChatStore", "MemoryChatStore", "RedisChatStore", "sanitize_markdown"]

"""A client's frame read whole: recognised and unmasked without Autobahn's frame parser (RFC 6455 §5.2-5.3).

``wsgw.internals.autobahn.ServerProtocol._dataReceived`` hands Autobahn's own handling a read that is exactly one
whole masked pong (``unmask``) or one whole masked text message (``whole_text``, the client's subscribe frame
carrying its token: bench/RESULTS.md "Connect path", part 5); any other read goes to Autobahn's parser, which then
refuses what it refuses (1002, 1007, 1009) exactly as before.
"""

from __future__ import annotations


def unmask(data: bytes, start: int, size: int) -> bytes:
    """The ``size`` bytes of ``data`` from ``start`` to its end, XORed with the 4-byte mask just before them."""
    key = (data[start - 4:start] * ((size + 3) >> 2))[:size]
    return (int.from_bytes(data[start:], "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")


def whole_text(data: bytes, max_frame: int, max_message: int) -> bytes | None:
    """The unmasked payload when ``data`` is exactly one whole frame that Autobahn would take as a complete text
    message with nothing to refuse: final, no RSV bit, opcode 1, masked, its length in the 7-bit or minimal 16-bit
    form, within ``max_frame`` and ``max_message`` bytes (Autobahn's options, 0: no limit), its payload valid
    UTF-8 (strict, as Autobahn's validator: no surrogate, nothing past U+10FFFF, no overlong form). Else None."""
    length = len(data)
    if length < 6 or data[0] != 0x81:
        return None
    second = data[1]
    if 0x80 <= second < 0xFE:  # masked, a 7-bit length (0-125)
        size, start = second - 0x80, 6
    elif second == 0xFE and length >= 8:  # masked, a 16-bit length (126-65535 in its minimal form)
        size, start = (data[2] << 8) | data[3], 8
        if size < 126:
            return None
    else:
        return None
    if length != start + size or 0 < max_frame < size or 0 < max_message < size:
        return None
    payload = unmask(data, start, size)
    if not payload.isascii():
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return payload

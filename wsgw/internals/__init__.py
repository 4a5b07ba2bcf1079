"""Every use of a library's private API, one module per library (``twisted``, ``autobahn``, ``txredisapi``, ``pyjwt``).

Each is there for speed or memory measured in bench/RESULTS.md, or for a
behaviour the public API does not offer; ``tests/test_internals.py`` pins what
each relies on, so an upgrade that changes it fails loudly there instead of
quietly elsewhere. Nothing outside this package reads another library's
private names.
"""

"""wsgw: a WebSocket gateway for the Pydio Cells event and chat protocol."""

__version__ = "0.1.0"

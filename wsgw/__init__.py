"""wsgw: a WebSocket gateway for the Pydio Cells event and chat protocol.

``__version__`` is the installed distribution's version: setup.cfg ``[metadata] version`` is its only source
("0+unknown" when the package is imported from a checkout that was never installed).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wsgw")
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"

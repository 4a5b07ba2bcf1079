"""twistd dropin: ``twistd -n wsgw``."""

from twisted.application.service import ServiceMaker

wsgw = ServiceMaker("wsgw", "wsgw.tap", "WebSocket gateway for events and chat", "wsgw")

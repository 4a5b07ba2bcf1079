"""Support for the integration tests (not tests themselves): real daemons, real WebSocket clients, private
redis-servers, bounded waits. Fixtures built on them are in ``tests/conftest.py``."""

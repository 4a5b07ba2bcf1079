"""``[server] workers``: N gateway processes on the same listening sockets (supervisor.py says how and why)."""

"""Redis on txredisapi: one connection per ``RedisLink``, kept up and set up again after every reconnect."""

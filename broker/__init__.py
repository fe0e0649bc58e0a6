"""The zchat broker: a routing core (core.py) inside a ZeroMQ shell (server.py)."""

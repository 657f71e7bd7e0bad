"""A production Socket.IO server: python-socketio on aiohttp, with durable delivery on Redis."""

__version__ = "0.1.0"

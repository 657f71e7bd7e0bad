"""The server's side of the delivery core: what the server needs beyond the shared channel log.

The channel log itself (contract, memory and Redis implementations, the Redis pub/sub
subscriptions and the publication envelope) is the ``realtime_channels`` package
(``channels/realtime_channels/``), its own distribution so that a Django or Celery project
publishes through the very same definitions without installing the server.
"""

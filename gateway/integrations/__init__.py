"""The integration plane: the delivery engine and its sinks (InfluxDB; MQTT next).

=========================  ================================================================
module                     what it does
=========================  ================================================================
``sink``                   what a sink is: the ``Sink`` protocol, ``DeliveryError``, settings
``engine``                 ``DeliveryEngine``: cursor, batches, backoff, halving, dead letters
``influx.sink``            ``InfluxSink``: stored rows as line protocol, device labels as tags
``influx.lineprotocol``    the line protocol encoder (plain functions, no I/O)
``influx.writers``         the v1 (``/write``) and v2 (influxdb-client) HTTP writers
=========================  ================================================================

The engine's progress (cursors, state, dead letters) lives in ``gateway.store.delivery``.
"""

"""The integration plane: the delivery engine and its sinks (InfluxDB; MQTT next)."""

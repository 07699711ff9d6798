"""The InfluxDB sink: line protocol encoding and the v1 / v2 writers."""

"""Load generator and benchmark suite for the iotgw device plane.

``python -m bench [scenario ...] [--quick]`` (or ``make bench``) starts what a
scenario needs (the real gateway as a subprocess, a bare ``websockets`` server,
Mosquitto), drives it with simulated devices spread over several processes,
prints a table and writes ``bench/results/<date>-<scenario>.json``.

Modules: ``loadgen`` (devices speaking protocol v1 over a lean WebSocket
client), ``mqttgen`` (the same workload with paho-mqtt), ``bare`` (the
transport ceiling), ``targets`` (processes under test), ``procstat``
(/proc readings), ``stats`` (latency histograms), ``scenarios`` (the registry),
``runner`` (CLI, table, JSON). docs/performance.md has the figures.
"""

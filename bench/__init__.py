"""Load generator and benchmark suite for the iotgw device plane.

``python -m bench [scenario ...] [--quick]`` (or ``make bench``) starts what a
scenario needs (the real gateway as a subprocess, a bare ``websockets`` server,
Mosquitto), drives it with simulated devices spread over several processes,
prints a table and writes ``bench/results/<date>-<scenario>.json``.

Modules, each importing only those listed before it: ``stats`` (latency
histograms), ``procstat`` (/proc readings), ``targets`` (processes under
test), ``registry`` (``@scenario``, ``Context``, ``Result``), ``report``
(versions, table, JSON), ``workload`` (the device schedule, any transport),
``mqttgen`` (the workload over paho-mqtt), ``loadgen`` (devices speaking
protocol v1 over a lean WebSocket client; runs the worker processes),
``drive`` (one measurement against one target), the scenario modules
``scenarios``, ``command_rtt`` and ``influx_e2e``, and ``runner`` (the CLI).
``bare`` is the transport ceiling, run as a process of its own.
docs/performance.md has the figures.
"""

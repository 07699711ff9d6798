# iotgw firmware: the app's start, run once (docs/firmware.md, "Memory").
#
# app.py imports this module to read the config, to set the app up and to start its tasks,
# and unloads it after each: none of it holds heap meanwhile.
import asyncio
import gc
import json

import compat
import drivers
from compat import BOARD, collect, log, ticks_ms
from link import Link


def config_path():
    """IOTGW_CONFIG, else the first command-line argument, else config.json."""
    path = compat.getenv("IOTGW_CONFIG")
    if not path:
        args = compat.argv()
        path = args[1] if len(args) > 1 else "config.json"
    return path if path[:1] == "/" else compat.CWD + path


def load_config(path=None):
    with open(path or config_path()) as f:
        cfg = json.load(f)
    if not cfg.get("url"):
        raise ValueError("config has no gateway url")
    return cfg


def init(app, cfg):
    """App.__init__: the config, the link (its ring first), the drivers, the wiring."""
    app.cfg = cfg
    app.trace = cfg.get("trace", False)
    app.t_start = ticks_ms()
    app.interval_ms = max(1, int(cfg.get("interval_s", 10) * 1000))
    app.sample_limit = cfg.get("sample_limit", 0)  # tests: stop sampling after N
    app.mem_every = cfg.get("trace_mem_every", 0)
    app.taken = 0
    app.beat = ticks_ms()  # sampler heartbeat for the watchdog
    # The link first: its ring and frame buffer are the largest blocks, allocated
    # once while the heap is still in one piece (the drivers import more code).
    collect()
    app.link = Link(cfg, (), {}, app.info)
    app.sensors, app.inputs, app.outputs = build(cfg)
    app.wifi = None
    if BOARD and cfg.get("wifi"):
        import wifi

        app.wifi = wifi.Wifi(cfg["wifi"])
    metrics = []
    for s in app.sensors:
        metrics.extend(s.metrics)
    app.link.sensors = metrics
    # the commands declared in hello (descriptions: hello.py), run by app.command (appcmd.py)
    app.link.commands = ["ping", "read_now", "set_interval", "ota"]
    if app.outputs:
        app.link.commands += ["set", "toggle", "blink"]  # appcmd.py: actuate.py
    app.link.net = app.wifi
    app.link.outputs = app.outputs  # their names describe set/toggle/blink in hello
    # hello's info.outputs, "name:kind,..." in config order, as the agent sends it: the page's
    # controls and Home Assistant discovery offer each output from it (docs/commands.md)
    app.outputs_info = ",".join(
        n + ":" + app.outputs[n].kind for n in [oc.get("name") for oc in cfg.get("outputs", [])]
        if n in app.outputs)
    app.link.on_command = app.command
    # What the app reads after the start (the tasks, appcmd.py, the drain): the rest of the
    # config (sensors, outputs, the link's settings: ~2 KB on the 64-bit port) is freed.
    app.cfg = {}
    for k in ("input_poll_ms", "wdt_ms", "exit_when_drained", "drain_timeout_s", "follow_gateway_interval",
              "min_interval_s", "ota_confirm_s"):
        if k in cfg:
            app.cfg[k] = cfg[k]


# -- the drivers, from the config's sensors, inputs and outputs (drivers/__init__.py) --------------


def backend(cfg):
    """The drivers' module: drivers/sim.py (config "simulate", or a port without machine.Pin),
    else drivers/hw.py."""
    sim = cfg.get("simulate")
    if sim is None:
        sim = not BOARD
    if sim:
        from drivers import sim as mod
    else:
        from drivers import hw as mod
    return mod


def build(cfg):
    """-> (sensors, inputs, outputs{name: output}) for cfg's sensors/inputs/outputs lists."""
    mod = backend(cfg)
    sensors = []
    for sc in cfg.get("sensors", []):
        cls = mod.SENSORS.get(sc.get("type"))
        if cls is None:
            log(0, "DRIVER unknown sensor type %r, skipped" % sc.get("type"))
            continue
        try:
            sensors.append(cls(sc))
        except Exception as exc:  # one broken sensor must not stop the others
            log(0, "DRIVER sensor %r failed to start: %r" % (sc.get("type"), exc))
    inputs = []
    for ic in cfg.get("inputs", []):
        try:
            inputs.append(drivers.Debounce(mod.Input(ic), ic.get("debounce_ms", 50), ic.get("event")))
        except Exception as exc:
            log(0, "DRIVER input %r failed to start: %r" % (ic.get("name"), exc))
    outputs = {}
    for oc in cfg.get("outputs", []):
        t = oc.get("type", "digital")
        cls = mod.OUTPUTS.get(t)
        if cls is None:
            log(0, "DRIVER unknown output type %r, skipped (led, output, pwm_led)" % t)
            continue
        try:
            o = cls(oc)
            o.kind = KINDS.get(t, t)  # what hello's info.outputs and each result call it
            o.gpio = oc.get("pin")
            o.blinker = None  # the task of a running blink (command.py)
            outputs[oc["name"]] = o
        except Exception as exc:
            log(0, "DRIVER output %r failed to start: %r" % (oc.get("name"), exc))
    return sensors, inputs, outputs


KINDS = {"digital": "output", "pwm": "pwm_led"}


def start(app):
    """The tasks beside the sampler; -> the link's task."""
    log(1, "APP %s stream=%s sensors=%d outputs=%d interval=%d ms buffer=%d bytes"
        % (compat.AGENT, app.link.stream, len(app.sensors), len(app.outputs), app.interval_ms,
           app.link.buffer_bytes))
    collect()
    # Collect early and often enough that the heap does not fragment (MicroPython docs).
    try:
        gc.threshold(gc.mem_free() // 4 + gc.mem_alloc())
    except AttributeError:
        pass
    link_task = asyncio.create_task(app.link.run())
    if compat.OTA_TRIAL:
        asyncio.create_task(app.command("ota_trial"))
    if app.inputs:
        asyncio.create_task(app.poll_inputs())
    if BOARD and app.cfg.get("wdt_ms", 8000):
        import machine

        if hasattr(machine, "WDT"):
            asyncio.create_task(app.watchdog())
    return link_task


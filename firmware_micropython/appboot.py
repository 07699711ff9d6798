# iotgw firmware: the app's start and end, run once (docs/firmware.md, "Memory").
#
# app.py imports this module to read the config, to set the app up, to start its tasks
# and (tests) to drain it, and unloads it after each: none of it holds heap meanwhile.
import asyncio
import gc
import json

import compat
import drivers
from compat import BOARD, collect, log, ticks_add, ticks_diff, ticks_ms
from link import Link


def config_path():
    """IOTGW_CONFIG, else the first command-line argument, else config.json."""
    path = compat.getenv("IOTGW_CONFIG")
    if not path:
        args = compat.argv()
        path = args[1] if len(args) > 1 else "config.json"
    return path


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
    app.sensors, app.inputs, app.outputs = drivers.build(cfg)
    app.wifi = None
    if BOARD and cfg.get("wifi"):
        import wifi

        app.wifi = wifi.Wifi(cfg["wifi"])
    metrics = []
    for s in app.sensors:
        metrics.extend(s.metrics)
    app.link.sensors = metrics
    app.link.commands = commands(app)
    app.link.net = app.wifi
    app.link.outputs = app.outputs  # their names describe set/toggle/blink in hello
    # hello's info.outputs, "name:kind,..." in config order, as the agent sends it: the page's
    # controls and Home Assistant discovery offer each output from it (docs/commands.md)
    app.outputs_info = ",".join(
        n + ":" + app.outputs[n].kind for n in [oc.get("name") for oc in cfg.get("outputs", [])]
        if n in app.outputs)
    app.link.on_welcome = app._cmd("welcome")


def commands(app):
    """{name: handler} of the commands declared in hello (descriptions: hello.py)."""
    names = ["ping", "read_now", "set_interval", "ota"]
    if app.outputs:
        names += ["set", "toggle", "blink"]  # appcmd.py: actuate.py
    cmds = {}
    for name in names:
        cmds[name] = app._cmd(name)
    return cmds


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
        asyncio.create_task(app._cmd("ota_trial")(None))
    if app.inputs:
        asyncio.create_task(app.poll_inputs())
    if BOARD and app.cfg.get("wdt_ms", 8000):
        import machine

        if hasattr(machine, "WDT"):
            asyncio.create_task(app.watchdog())
    return link_task


async def drain(app, link_task):
    """Tests (exit_when_drained): wait until the gateway has acknowledged everything, leave."""
    end = ticks_add(ticks_ms(), int(app.cfg.get("drain_timeout_s", 60) * 1000))
    while not app.link.idle() and ticks_diff(end, ticks_ms()) > 0:
        await asyncio.sleep_ms(50)
    log(0, "DRAINED %d buffered=%d dropped=%d acked=%d" % (
        app.taken, app.link.buffered, app.link.dropped, app.link.acked))
    await app.link.stop()
    await asyncio.sleep_ms(50)
    link_task.cancel()

# iotgw firmware: the application and its supervisor tasks.
#
#   sampler      reads every sensor each interval, hands the sample to the link
#   inputs       polls digital inputs, debounced changes become `event`s
#   link.run     keeps the gateway session up (WiFi first, on a board)
#   watchdog     feeds machine.WDT while the sampler is alive (boards only)
#
# Only the link touches the network and only drivers/ touch `machine`; a
# failure in one sensor or in the network never stops the other tasks.
import asyncio
import gc
import json

import compat
import drivers
from compat import BOARD, collect, fault, log, ticks_add, ticks_diff, ticks_ms
from link import Link
from ws import unload as ws_unload

MIN_INTERVAL_MS = 1
# The floor on an interval set from outside (the set_interval command, welcome.settings):
# a mistyped "0.001" must not turn a board into a busy loop that floods the gateway
# and starves the link. The config's own interval_s is the owner's choice and is not raised.
MIN_REMOTE_INTERVAL_S = 0.5


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


class App:
    def __init__(self, cfg):
        self.cfg = cfg
        compat.LEVEL[0] = cfg.get("log_level", 1)
        compat.STATE_FILE[0] = cfg.get("state_file")  # unix port: where a reset's loss is noted
        if cfg.get("fault"):  # tests only: MemoryError at one allocation site (compat.fault)
            compat.inject(cfg["fault"]["site"], cfg["fault"]["every"])
        self.trace = cfg.get("trace", False)
        self.t_start = ticks_ms()
        self.interval_ms = max(MIN_INTERVAL_MS, int(cfg.get("interval_s", 10) * 1000))
        self.min_remote_s = max(MIN_REMOTE_INTERVAL_S, cfg.get("min_interval_s", 1))
        self.follow_gateway = cfg.get("follow_gateway_interval", True)
        self.sample_limit = cfg.get("sample_limit", 0)  # tests: stop sampling after N
        self.mem_every = cfg.get("trace_mem_every", 0)
        self.taken = 0
        self.beat = ticks_ms()  # sampler heartbeat for the watchdog
        # The link first: its ring and frame buffer are the largest blocks, allocated
        # once while the heap is still in one piece (the drivers import more code).
        collect()
        self.link = Link(cfg, (), {}, self.info)
        self.sensors, self.inputs, self.outputs = drivers.build(cfg)
        self.wifi = None
        if BOARD and cfg.get("wifi"):
            import wifi

            self.wifi = wifi.Wifi(cfg["wifi"])
        metrics = []
        for s in self.sensors:
            metrics.extend(s.metrics)
        self.link.sensors = metrics
        self.link.commands = self.commands()
        self.link.net = self.wifi
        self.link.outputs = list(self.outputs)
        self.link.on_settings = self.on_settings
        self.link.on_connected = self.on_connected

    # -- commands (declared in hello) -----------------------------------------------

    def commands(self):
        """{name: handler} of the commands declared in hello (descriptions: hello.py)."""
        cmds = {"ping": self.c_ping, "read_now": self.c_read_now, "set_interval": self.c_set_interval,
                "ota": self.c_ota}
        if self.outputs:
            cmds["set"] = self.c_set
            cmds["toggle"] = self.c_toggle
        return cmds

    async def c_ping(self, args):
        return "pong"

    async def c_ota(self, args):
        import ota

        try:
            value = ota.handle(args)
        finally:
            ws_unload("ota")
        if isinstance(value, dict) and value.get("reboot"):
            asyncio.create_task(self._reset_soon())  # after the result has gone out
        return value

    async def _reset_soon(self):
        await asyncio.sleep_ms(1000)
        log(0, "APP resetting for the update")
        await self.link.stop()
        compat.reset()

    def on_connected(self):
        """First welcome: an update on trial has reached the gateway, keep it."""
        if compat.OTA_TRIAL:
            import otaboot

            try:
                otaboot.confirm()
                compat.OTA_LAST = otaboot.last()
            finally:
                ws_unload("otaboot")
                ws_unload("ota")
            compat.OTA_TRIAL = None

    async def ota_trial(self):
        # An update that cannot reach the gateway resets the board until otaboot rolls it back.
        await asyncio.sleep_ms(int(self.cfg.get("ota_confirm_s", 300) * 1000))
        if compat.OTA_TRIAL:
            log(0, "OTA %s has not reached the gateway: resetting" % compat.OTA_TRIAL)
            compat.reset()

    async def c_read_now(self, args):
        return await self.sample_once()

    async def c_set_interval(self, args):
        s = float(args["seconds"])
        if not self.min_remote_s <= s <= 86400:
            raise ValueError("seconds must be between %s and 86400" % self.min_remote_s)
        self.interval_ms = int(s * 1000)
        return s

    def _output(self, args):
        out = self.outputs.get(args.get("output"))
        if out is None:
            raise ValueError("no output named %r" % args.get("output"))
        return out

    async def c_set(self, args):
        if "value" not in args:
            raise ValueError("missing value")
        return self._output(args).set(args["value"])

    async def c_toggle(self, args):
        return self._output(args).toggle()

    def on_settings(self, settings):
        if self.follow_gateway and "interval_s" in settings:
            s = max(self.min_remote_s, float(settings["interval_s"]))
            self.interval_ms = int(s * 1000)
            log(1, "APP interval set by the gateway: %d ms" % self.interval_ms)

    def info(self):
        i = {
            "mem_free": gc.mem_free(),
            "mem_alloc": gc.mem_alloc(),
            "uptime_s": ticks_diff(ticks_ms(), self.t_start) // 1000,
            "platform": compat.PLATFORM,
            "sessions": self.link.sessions if hasattr(self, "link") else 0,
        }
        if hasattr(self, "link") and self.link.lost_at_boot:
            i["lost_at_boot"] = self.link.lost_at_boot
        if compat.OTA_LAST:
            i["firmware_update"] = compat.OTA_LAST
        if self.wifi is not None:
            r = self.wifi.rssi()
            if r is not None:
                i["rssi"] = r
        return i

    # -- tasks --------------------------------------------------------------------------

    async def sample_once(self):
        values = {}
        try:
            fault("sample")
            for s in self.sensors:
                try:
                    values.update(await s.read())
                except MemoryError:
                    raise
                except Exception as exc:  # a flaky sensor skips one reading, no more
                    log(0, "SENSOR %s read failed: %r" % (s.metrics[0][0] if s.metrics else "?", exc))
        except MemoryError:
            # Taken but not kept: counted in `dropped`, never silently gone.
            self.taken += 1
            self.link.lose(1)
            collect()
            return {}
        if values:
            self.taken += 1
            self.link.add_sample(values)
            if self.trace:
                log(0, "SAMPLE %d %d" % (self.taken, compat.wall_ms()))
        return values

    async def sampler(self):
        due = ticks_ms()
        while not self.sample_limit or self.taken < self.sample_limit:
            self.beat = ticks_ms()
            try:
                await self.sample_once()
                if self.mem_every and self.taken % self.mem_every == 0:
                    collect()
                    log(0, "MEM %d %d %d" % (self.taken, gc.mem_free(), gc.mem_alloc()))
            except MemoryError:  # after the sample was counted (a log line): go on
                collect()
            due = ticks_add(due, self.interval_ms)
            wait = ticks_diff(due, ticks_ms())
            if wait < 0:  # fell behind (slow sensor): do not try to catch up
                due = ticks_ms()
                wait = 0
            await asyncio.sleep_ms(wait)
        log(1, "APP sample limit reached: %d" % self.taken)

    async def poll_inputs(self):
        period = self.cfg.get("input_poll_ms", 10)
        while True:
            for inp in self.inputs:
                v = inp.poll()
                if v is not None:
                    self.link.add_event(inp.event, {"value": v})
                    try:
                        log(1, "EVENT %s %s" % (inp.event, v))
                    except MemoryError:
                        pass
            await asyncio.sleep_ms(period)

    async def watchdog(self):
        import machine

        timeout = self.cfg.get("wdt_ms", 8000)  # RP2040 maximum is 8388 ms
        wdt = machine.WDT(timeout=timeout)
        # Fed only while the sampler makes progress; a wedged loop resets the board.
        while True:
            if ticks_diff(ticks_ms(), self.beat) < 2 * self.interval_ms + 60000:
                wdt.feed()
            await asyncio.sleep_ms(timeout // 4)

    async def main(self):
        log(1, "APP %s stream=%s sensors=%d outputs=%d interval=%d ms"
            % (compat.AGENT, self.link.stream, len(self.sensors), len(self.outputs), self.interval_ms))
        collect()
        # Collect early and often enough that the heap does not fragment (MicroPython docs).
        try:
            gc.threshold(gc.mem_free() // 4 + gc.mem_alloc())
        except AttributeError:
            pass
        link_task = asyncio.create_task(self.link.run())
        if compat.OTA_TRIAL:
            asyncio.create_task(self.ota_trial())
        if self.inputs:
            asyncio.create_task(self.poll_inputs())
        if BOARD and self.cfg.get("wdt_ms", 8000):
            import machine

            if hasattr(machine, "WDT"):
                asyncio.create_task(self.watchdog())
        await self.sampler()
        if not self.cfg.get("exit_when_drained"):
            while True:  # sample_limit reached, keep serving commands
                self.beat = ticks_ms()
                await asyncio.sleep_ms(1000)
        # Tests: wait until the gateway has acknowledged everything, then leave.
        end = ticks_add(ticks_ms(), int(self.cfg.get("drain_timeout_s", 60) * 1000))
        while not self.link.idle() and ticks_diff(end, ticks_ms()) > 0:
            await asyncio.sleep_ms(50)
        log(0, "DRAINED %d buffered=%d dropped=%d acked=%d" % (
            self.taken, self.link.buffered, self.link.dropped, self.link.acked))
        await self.link.stop()
        await asyncio.sleep_ms(50)
        link_task.cancel()


def run(cfg=None):
    """Entry point (main.py): load the config, run forever; on a board, reset after a crash."""
    try:
        cfg = cfg or load_config()
        asyncio.run(App(cfg).main())
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        compat.print_exception(exc)
        if BOARD:
            import time

            import machine

            # Well under the watchdog's shortest timeout (RP2040 max 8.3 s): the reset is ours.
            log(0, "APP crashed; resetting in 2 s")
            time.sleep(2)
            machine.reset()
        raise

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
from compat import BOARD, collect, log, rand_below, ticks_add, ticks_diff, ticks_ms
from link import Link

MIN_INTERVAL_MS = 1


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


class Wifi:
    """WiFi station with reconnect, backoff and full jitter (boards only)."""

    def __init__(self, cfg):
        import network

        self.ssid = cfg.get("ssid")
        self.password = cfg.get("password")
        self.timeout_ms = int(cfg.get("timeout_s", 20) * 1000)
        self.base_ms = int(cfg.get("backoff_base_s", 1) * 1000)
        self.cap_ms = int(cfg.get("backoff_cap_s", 60) * 1000)
        self.wlan = network.WLAN(network.STA_IF)
        if cfg.get("hostname"):
            try:
                network.hostname(cfg["hostname"])
            except (AttributeError, ValueError, OSError):
                pass

    def isconnected(self):
        return self.wlan.isconnected()

    def rssi(self):
        try:
            return self.wlan.status("rssi")
        except (ValueError, OSError, TypeError):
            return None

    async def up(self):
        """Return once the station has an IP address; retries forever."""
        attempt = 0
        while not self.wlan.isconnected():
            self.wlan.active(True)
            if compat.PLATFORM == "rp2":
                self.wlan.config(pm=0xA11140)  # Pico W: power saving off, steadier link
            log(1, "WIFI connecting to", self.ssid)
            try:
                self.wlan.connect(self.ssid, self.password)
            except OSError as exc:
                log(0, "WIFI connect failed:", exc)
            end = ticks_add(ticks_ms(), self.timeout_ms)
            while not self.wlan.isconnected() and ticks_diff(end, ticks_ms()) > 0:
                await asyncio.sleep_ms(200)
            if self.wlan.isconnected():
                break
            try:
                self.wlan.disconnect()
            except OSError:
                pass
            delay = rand_below(min(self.cap_ms, self.base_ms << min(attempt, 16)) + 1)
            attempt += 1
            log(0, "WIFI not connected; retry in %d ms" % delay)
            await asyncio.sleep_ms(delay)
        log(1, "WIFI up", self.wlan.ifconfig()[0])


class App:
    def __init__(self, cfg):
        self.cfg = cfg
        compat.LEVEL[0] = cfg.get("log_level", 1)
        self.trace = cfg.get("trace", False)
        self.t_start = ticks_ms()
        self.interval_ms = max(MIN_INTERVAL_MS, int(cfg.get("interval_s", 10) * 1000))
        self.follow_gateway = cfg.get("follow_gateway_interval", True)
        self.sample_limit = cfg.get("sample_limit", 0)  # tests: stop sampling after N
        self.mem_every = cfg.get("trace_mem_every", 0)
        self.taken = 0
        self.beat = ticks_ms()  # sampler heartbeat for the watchdog
        self.sensors, self.inputs, self.outputs = drivers.build(cfg)
        self.wifi = None
        if BOARD and cfg.get("wifi"):
            self.wifi = Wifi(cfg["wifi"])
        metrics = []
        for s in self.sensors:
            metrics.extend(s.metrics)
        self.link = Link(cfg, metrics, self.commands(), self.info, self.wifi)
        self.link.on_settings = self.on_settings

    # -- commands (declared in hello) -----------------------------------------------

    def commands(self):
        cmds = {
            "ping": (self.c_ping, "answer pong", {}),
            "read_now": (self.c_read_now, "take a sample now and return it", {}),
            "set_interval": (self.c_set_interval, "set the sampling interval",
                             {"seconds": "interval in seconds"}),
        }
        if self.outputs:
            names = ", ".join(self.outputs)
            cmds["set"] = (self.c_set, "set an output",
                           {"output": "one of: " + names, "value": "true/false, or 0..1 for pwm"})
            cmds["toggle"] = (self.c_toggle, "toggle an output", {"output": "one of: " + names})
        return cmds

    async def c_ping(self, args):
        return "pong"

    async def c_read_now(self, args):
        return await self.sample_once()

    async def c_set_interval(self, args):
        s = float(args["seconds"])
        if not 0.001 <= s <= 86400:
            raise ValueError("seconds must be between 0.001 and 86400")
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
            self.interval_ms = max(MIN_INTERVAL_MS, int(float(settings["interval_s"]) * 1000))
            log(1, "APP interval set by the gateway: %d ms" % self.interval_ms)

    def info(self):
        i = {
            "mem_free": gc.mem_free(),
            "mem_alloc": gc.mem_alloc(),
            "uptime_s": ticks_diff(ticks_ms(), self.t_start) // 1000,
            "platform": compat.PLATFORM,
            "sessions": self.link.sessions if hasattr(self, "link") else 0,
        }
        if self.wifi is not None:
            r = self.wifi.rssi()
            if r is not None:
                i["rssi"] = r
        return i

    # -- tasks --------------------------------------------------------------------------

    async def sample_once(self):
        values = {}
        for s in self.sensors:
            try:
                values.update(await s.read())
            except Exception as exc:  # a flaky sensor skips one reading, no more
                log(0, "SENSOR %s read failed: %r" % (s.metrics[0][0] if s.metrics else "?", exc))
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
            await self.sample_once()
            if self.mem_every and self.taken % self.mem_every == 0:
                collect()
                log(0, "MEM %d %d %d" % (self.taken, gc.mem_free(), gc.mem_alloc()))
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
                    log(1, "EVENT %s %s" % (inp.event, v))
                    self.link.add_event(inp.event, {"value": v})
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

            log(0, "APP crashed; resetting in 10 s")
            time.sleep(10)
            machine.reset()
        raise

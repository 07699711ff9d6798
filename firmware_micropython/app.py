# iotgw firmware: the application and its supervisor tasks.
#
#   sampler      reads every sensor each interval, hands the sample to the link
#   inputs       polls digital inputs, debounced changes become `event`s
#   link.run     keeps the gateway session up (WiFi first, on a board)
#   watchdog     feeds machine.WDT while the sampler is alive (boards only)
#
# Only the link touches the network and only drivers/ touch `machine`; a
# failure in one sensor or in the network never stops the other tasks.
#
# What runs once (the config, the drivers, the setup, the tasks' start) is in
# appboot.py; the commands' handlers, the welcome's settings and an update's trial are
# in appcmd.py: each loaded when it runs and unloaded afterwards.
import asyncio
import gc

import compat
from compat import BOARD, collect, fault, log, ticks_add, ticks_diff, ticks_ms
from ws import unload as ws_unload


class App:
    def __init__(self, cfg):
        import appboot  # the config and the drivers, set up once (appboot.py)

        try:
            appboot.init(self, cfg)
        finally:
            ws_unload("appboot")
            appboot = None
        collect()
        import hellobuf  # hello's unchanging parts, rendered once (hellobuf.py)

        try:
            hellobuf.run(self.link)
        except MemoryError:  # the first session tries again
            pass
        finally:
            ws_unload("hellobuf")
            hellobuf = None

    # -- commands (declared in hello) -----------------------------------------------

    def command(self, name, args=None):
        """Run command `name` (or "welcome", "ota_trial") with appcmd.py loaded while it starts
        (the link's on_command): -> the command's coroutine; the welcome's settings are applied
        at once (-> None). One bound method for every command, not a closure each."""
        import appcmd

        try:
            return appcmd.run(self, name, args)
        finally:
            ws_unload("appcmd")

    def info(self):
        i = {
            "mem_free": gc.mem_free(),
            "mem_alloc": gc.mem_alloc(),
            "uptime_s": ticks_diff(ticks_ms(), self.t_start) // 1000,
            "platform": compat.PLATFORM,
            "sessions": self.link.sessions if hasattr(self, "link") else 0,
        }
        if getattr(self, "outputs_info", ""):
            i["outputs"] = self.outputs_info
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
        import appboot  # the tasks' start (appboot.py)

        try:
            link_task = appboot.start(self)
        finally:
            ws_unload("appboot")
            appboot = None
        await self.sampler()
        if not self.cfg.get("exit_when_drained"):
            while True:  # sample_limit reached, keep serving commands
                self.beat = ticks_ms()
                await asyncio.sleep_ms(1000)
        # Tests: wait until the gateway has acknowledged everything, then leave. Here, not in
        # appboot.py: loading 2.6 KB of code at the end of a long run may not fit any more.
        end = ticks_add(ticks_ms(), int(self.cfg.get("drain_timeout_s", 60) * 1000))
        link = self.link
        while not link.idle() and ticks_diff(end, ticks_ms()) > 0:
            await asyncio.sleep_ms(50)
        # dropped = lost (MemoryError before the ring) + the ring's own (overflow, refused frames)
        log(0, "DRAINED %d buffered=%d dropped=%d acked=%d lost=%d" % (
            self.taken, link.buffered, link.dropped, link.acked, link.out.lost))
        await link.stop()
        await asyncio.sleep_ms(50)
        link_task.cancel()


def run(cfg=None):
    """Entry point (main.py): load the config, run forever; on a board, reset after a crash."""
    try:
        if cfg is None:
            import appboot

            cfg = appboot.load_config()
            ws_unload("appboot")
            appboot = None
        app = App(cfg)
        cfg = None  # the app keeps what it needs of it (appboot.init)
        asyncio.run(app.main())
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

# iotgw firmware: the WiFi station, with reconnect, backoff and full jitter (boards only).
#
# Imported by app.py only on a board with a "wifi" config: the unix port never loads it.
import asyncio

import compat
from compat import log, rand_below, ticks_add, ticks_diff, ticks_ms


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

# iotgw firmware: simulated sensors, inputs and outputs (unix port, tests, demos).
# Same config "type" names as drivers/hw.py, so one config runs on both.
import math

from compat import log, ticks_diff, ticks_ms

_T0 = ticks_ms()


def _wave(cfg, base, amp, period_s):
    t = ticks_diff(ticks_ms(), _T0) / 1000
    w = cfg.get("wave", {})
    v = w.get("base", base) + w.get("amp", amp) * math.sin(2 * math.pi * t / w.get("period_s", period_s))
    return round(v, 2)


class Counter:
    """Counts its reads (metric "n" by default): the tests find every sample by it."""

    def __init__(self, cfg):
        self.metric = cfg.get("metric", "n")
        self.metrics = [(self.metric, "", "counter")]
        self.n = 0

    async def read(self):
        self.n += 1
        return {self.metric: self.n}


class Wave:
    def __init__(self, cfg, metric="value", unit="", base=0.5, amp=0.4, period_s=600):
        self.cfg = cfg
        self.metric = cfg.get("metric", metric)
        self.metrics = [(self.metric, cfg.get("unit", unit), "gauge")]
        self.args = (base, amp, period_s)

    async def read(self):
        return {self.metric: _wave(self.cfg, *self.args)}


class ADC(Wave):
    def __init__(self, cfg):
        super().__init__(cfg, "adc", "", cfg.get("offset", 0) + cfg.get("scale", 1) * 0.5,
                         cfg.get("scale", 1) * 0.4)


class ChipTemp(Wave):
    def __init__(self, cfg):
        super().__init__(cfg, "chip_temp", "C", 27, 1.5, 900)


class DS18B20(Wave):
    def __init__(self, cfg):
        super().__init__(cfg, "temperature", "C", 19, 3, 1800)


class DHT:
    def __init__(self, cfg):
        self.cfg = cfg
        m = cfg.get("metrics", ["temperature", "humidity"])
        self.metrics = [(m[0], "C", "gauge"), (m[1], "%", "gauge")]

    async def read(self):
        return {self.metrics[0][0]: _wave(self.cfg, 21, 2, 600),
                self.metrics[1][0]: _wave({}, 45, 10, 1200)}


SENSORS = {
    "counter": Counter,
    "sim": Wave,
    "adc": ADC,
    "rp2_temp": ChipTemp,
    "dht11": DHT,
    "dht22": DHT,
    "ds18b20": DS18B20,
}


class Input:
    """Simulated digital input; flips every cfg["sim_every_s"] seconds (0: never)."""

    def __init__(self, cfg):
        self.name = cfg["name"]
        self.every_ms = int(cfg.get("sim_every_s", 0) * 1000)
        self._t0 = ticks_ms()

    def value(self):
        if not self.every_ms:
            return False
        return (ticks_diff(ticks_ms(), self._t0) // self.every_ms) % 2 == 1


class Output:
    """Simulated output: remembers its value and logs every change."""

    def __init__(self, cfg):
        self.name = cfg["name"]
        self.pwm = cfg.get("type") == "pwm"
        self.value = 0.0 if self.pwm else False

    def set(self, value):
        if self.pwm:
            value = float(value)
            if not 0 <= value <= 1:
                raise ValueError("pwm value must be between 0 and 1")
        else:
            value = bool(value)
        self.value = value
        log(0, "OUTPUT %s %s" % (self.name, value))
        return value

    def toggle(self):
        if self.pwm:
            return self.set(0.0 if self.value else 1.0)
        return self.set(not self.value)


OUTPUTS = {"digital": Output, "pwm": Output}

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


class Sensor:
    """Every simulated sensor type in one class (a class costs heap on a board): "counter"
    counts its reads (metric "n" by default: the tests find every sample by it); the others
    are slow sine waves, config "wave" {base, amp, period_s} overriding the first one's."""

    def __init__(self, cfg):
        t = cfg.get("type")
        self.cfg = cfg
        self.n = 0
        if t == "counter":
            self.metrics = [(cfg.get("metric", "n"), "", "counter")]
            self.waves = ()
        elif t in ("dht11", "dht22"):
            m = cfg.get("metrics", ["temperature", "humidity"])
            self.metrics = [(m[0], "C", "gauge"), (m[1], "%", "gauge")]
            self.waves = ((21, 2, 600), (45, 10, 1200))
        else:
            if t == "adc":
                d = ("adc", "", cfg.get("offset", 0) + cfg.get("scale", 1) * 0.5, cfg.get("scale", 1) * 0.4, 600)
            elif t == "rp2_temp":
                d = ("chip_temp", "C", 27, 1.5, 900)
            elif t == "ds18b20":
                d = ("temperature", "C", 19, 3, 1800)
            else:  # "sim"
                d = ("value", "", 0.5, 0.4, 600)
            self.metrics = [(cfg.get("metric", d[0]), cfg.get("unit", d[1]), "gauge")]
            self.waves = (d[2:],)

    async def read(self):
        if not self.waves:
            self.n += 1
            return {self.metrics[0][0]: self.n}
        r = {}
        for i in range(len(self.waves)):
            r[self.metrics[i][0]] = _wave(self.cfg if i == 0 else {}, *self.waves[i])
        return r


SENSORS = {"counter": Sensor, "sim": Sensor, "adc": Sensor, "rp2_temp": Sensor, "dht11": Sensor,
           "dht22": Sensor, "ds18b20": Sensor}


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
    """Simulated output: remembers its value and logs every change (OUTPUT name value)."""

    def __init__(self, cfg):
        self.name = cfg["name"]
        self.pwm = cfg.get("type") in ("pwm", "pwm_led")
        self.invert = cfg.get("invert", False)
        self.value = float(cfg.get("initial", 0)) if self.pwm else bool(cfg.get("initial", False))

    def set(self, value):
        self.value = value
        log(0, "OUTPUT %s %s" % (self.name, value))
        return value

    def level(self):
        return self.value if self.pwm else self.value != self.invert


OUTPUTS = {"led": Output, "output": Output, "digital": Output, "pwm_led": Output, "pwm": Output}

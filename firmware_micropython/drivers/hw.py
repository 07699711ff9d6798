# iotgw firmware: real drivers for ESP32 and RP2040 (Pico W). Board-only: it
# imports `machine`; the unix port uses drivers/sim.py instead.
import asyncio
import sys

import machine

from drivers import scaled

RP2 = sys.platform == "rp2"


def _pin(p):
    return machine.Pin(p)  # int GPIO number, or a name such as "LED" on a Pico W


class ADC:
    """Analog input: value = offset + scale * read_u16() / 65535 (config keys)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.metric = cfg.get("metric", "adc")
        self.metrics = [(self.metric, cfg.get("unit", ""), "gauge")]
        pin = cfg["pin"]
        if RP2:
            self.adc = machine.ADC(pin if pin in (0, 1, 2, 3, 4) else _pin(pin))
        else:
            self.adc = machine.ADC(_pin(pin))
            try:
                self.adc.atten(machine.ADC.ATTN_11DB)  # ESP32: full 0-3.3 V range
            except AttributeError:
                pass
        self.samples = cfg.get("oversample", 4)

    async def read(self):
        total = 0
        for _ in range(self.samples):
            total += self.adc.read_u16()
        return {self.metric: scaled(self.cfg, total / self.samples / 65535)}


class ChipTemp:
    """RP2040 on-chip temperature sensor on ADC channel 4 (RP2040 datasheet 4.9.5)."""

    def __init__(self, cfg):
        self.metric = cfg.get("metric", "chip_temp")
        self.metrics = [(self.metric, "C", "gauge")]
        self.adc = machine.ADC(4)

    async def read(self):
        volts = self.adc.read_u16() * 3.3 / 65535
        return {self.metric: round(27 - (volts - 0.706) / 0.001721, 2)}


class DHT:
    """DHT11/DHT22 temperature + humidity; a failed read returns {} (sample skipped)."""

    def __init__(self, cfg):
        import dht

        cls = dht.DHT11 if cfg["type"] == "dht11" else dht.DHT22
        self.dev = cls(_pin(cfg["pin"]))
        m = cfg.get("metrics", ["temperature", "humidity"])
        self.metrics = [(m[0], "C", "gauge"), (m[1], "%", "gauge")]

    async def read(self):
        try:
            self.dev.measure()
        except OSError:  # checksum/timeout: common on long wires, retry next interval
            return {}
        return {self.metrics[0][0]: self.dev.temperature(), self.metrics[1][0]: self.dev.humidity()}


class DS18B20:
    """DS18B20 on a 1-wire bus; several sensors on one pin become metric_0, metric_1, ..."""

    def __init__(self, cfg):
        import ds18x20
        import onewire

        self.dev = ds18x20.DS18X20(onewire.OneWire(_pin(cfg["pin"])))
        self.roms = self.dev.scan()
        metric = cfg.get("metric", "temperature")
        if len(self.roms) == 1:
            self.names = [metric]
        else:
            self.names = ["%s_%d" % (metric, i) for i in range(len(self.roms))]
        self.metrics = [(n, "C", "gauge") for n in self.names]

    async def read(self):
        try:
            self.dev.convert_temp()
            await asyncio.sleep_ms(750)  # 12-bit conversion time
            out = {}
            for name, rom in zip(self.names, self.roms):
                out[name] = self.dev.read_temp(rom)
            return out
        except OSError:
            return {}


SENSORS = {"adc": ADC, "rp2_temp": ChipTemp, "dht11": DHT, "dht22": DHT, "ds18b20": DS18B20}


class Input:
    """Digital input; config: pin, pull ("up"/"down"/none), invert (true for a button to GND)."""

    def __init__(self, cfg):
        self.name = cfg["name"]
        pull = {"up": machine.Pin.PULL_UP, "down": machine.Pin.PULL_DOWN}.get(cfg.get("pull"))
        self.pin = machine.Pin(cfg["pin"], machine.Pin.IN, pull)
        self.invert = cfg.get("invert", False)

    def value(self):
        return bool(self.pin.value()) != self.invert


class Digital:
    """On/off output (types led, output, digital); invert: true for an active-low relay."""

    def __init__(self, cfg):
        self.name = cfg["name"]
        self.invert = cfg.get("invert", False)
        self.pin = machine.Pin(cfg["pin"], machine.Pin.OUT)
        self.value = False
        self.set(bool(cfg.get("initial", False)))

    def set(self, value):
        self.value = value
        self.pin.value(value != self.invert)
        return value

    def level(self):
        return bool(self.pin.value())


class PWM:
    """PWM output (types pwm_led, pwm); value is the duty cycle from 0.0 to 1.0."""

    def __init__(self, cfg):
        self.name = cfg["name"]
        self.pwm = machine.PWM(_pin(cfg["pin"]))
        self.pwm.freq(cfg.get("freq", 1000))
        self.value = 0.0
        self.set(float(cfg.get("initial", 0.0)))

    def set(self, value):
        self.pwm.duty_u16(int(value * 65535))
        self.value = value
        return value

    def level(self):
        return self.value


OUTPUTS = {"led": Digital, "output": Digital, "digital": Digital, "pwm_led": PWM, "pwm": PWM}

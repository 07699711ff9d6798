# iotgw firmware: driver layer. The link never imports `machine`; the app asks
# this module for sensors, inputs and outputs built from the config.
#
# A backend module (hw.py on a board, sim.py anywhere) provides, for each
# config "type", a class with this interface:
#   sensor:  .metrics -> [(metric, unit, kind)], async .read() -> {metric: value}
#   input:   .name, .value() -> bool            (debounced by Debounce below)
#   output:  .name, .value (True/False, or 0.0..1.0 for pwm), .set(value) -> value
#            (value already checked by command.py), .level() -> what the pin is driven to
# Output config types: led, output, pwm_led (the agent's actuator kinds, docs/commands.md
# "Actuators: one vocabulary"), or the older digital (= output) and pwm (= pwm_led).
# Simulated drivers are used when config "simulate" is true, or automatically
# when the port has no machine.Pin (the unix port).
from compat import BOARD, log, ticks_diff, ticks_ms


def backend(cfg):
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
            inputs.append(Debounce(mod.Input(ic), ic.get("debounce_ms", 50), ic.get("event")))
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


def scaled(cfg, fraction):
    """ADC scaling from config: offset + scale * fraction (fraction = read_u16() / 65535)."""
    v = cfg.get("offset", 0) + cfg.get("scale", 1) * fraction
    nd = cfg.get("round")
    return round(v, nd) if nd is not None else v


class Debounce:
    """A digital input whose changes count once stable for debounce_ms.

    poll() returns the new state (bool) when a stable change happened, else None.
    """

    def __init__(self, pin, debounce_ms=50, event=None):
        self.pin = pin
        self.name = pin.name
        self.event = event or pin.name
        self.debounce_ms = debounce_ms
        self.state = pin.value()
        self._cand = self.state
        self._since = ticks_ms()

    def poll(self):
        v = self.pin.value()
        now = ticks_ms()
        if v != self._cand:
            self._cand = v
            self._since = now
            return None
        if v != self.state and ticks_diff(now, self._since) >= self.debounce_ms:
            self.state = v
            return v
        return None

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
# when the port has no machine.Pin (the unix port). The backend is chosen and the drivers
# built from the config once, at start, by appboot.py (build): that code holds no heap after.
from compat import ticks_diff, ticks_ms


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

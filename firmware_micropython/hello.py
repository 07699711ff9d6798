# iotgw firmware: the `hello` message (docs/protocol.md 4.1), loaded once per session.
#
# Link.hello_text() imports this module, builds the text and unloads it again
# (ws.unload): the command descriptions and this builder hold no heap between
# sessions.
import json

from proto import PROTOCOL, _info_json, _str, name_ok

# What each built-in command does and takes, as declared in hello. set, toggle and blink are
# the agent's (docs/commands.md, "Actuators: one vocabulary"); "%s" is the output names.
_T = "actuator: %s"
DESCRIPTIONS = {
    "ping": ("answer pong, with the actuator states", {}),
    "read_now": ("take a sample now and return it", {}),
    "set_interval": ("set the sampling interval", {"seconds": "interval in seconds"}),
    "set": ("set an actuator: on/off for led and output, 0..1 for pwm_led",
            {"target": _T, "value": "on/off, true/false, 1/0, or a number 0..1"}),
    "toggle": ("invert an actuator", {"target": _T}),
    "blink": ("blink an actuator in the background; set/toggle stops it",
              {"target": _T, "on_time": "seconds on (0.5)", "off_time": "seconds off (0.5)",
               "n": "times (3); 0: until the next set or toggle"}),
    "ota": ("firmware update step (iotgw firmware ota)", {"op": "begin, chunk or commit"}),
}


def describe(names, outputs=()):
    """(name, description, {arg: description}) for each command name."""
    out = []
    joined = ", ".join(sorted(outputs))
    # in the agent's order (a MicroPython dict has none): the page offers the first one
    order = ("ping", "read_now", "set_interval", "set", "toggle", "blink")
    for name in [n for n in order if n in names] + [n for n in names if n not in order]:
        d = DESCRIPTIONS.get(name, ("", {}))
        args = {}
        for a in d[1]:
            args[a] = d[1][a] % joined if "%s" in d[1][a] else d[1][a]
        out.append((name, d[0], args))
    return out


def hello(stream, agent, last_acked=0, sensors=(), commands=(), buffered=0, dropped=0,
          info=None, device=None, protocol=PROTOCOL, join="".join):
    """Text of `hello`. sensors: (metric, unit, kind) tuples or dicts;
    commands: (name, description, {arg: description}) tuples or dicts."""
    parts = [
        '{"type":"hello","stream":', json.dumps(stream),
        ',"agent":', _str(agent),
        ',"protocol":%d' % protocol,
    ]
    if device:
        parts.append(',"device":')
        parts.append(json.dumps(device))
    parts.append(',"last_acked":%d,"buffered":%d,"dropped":%d' % (last_acked, buffered, dropped))
    parts.append(',"sensors":[')
    first = True
    for s in sensors:
        if isinstance(s, dict):
            s = (s["metric"], s.get("unit", ""), s.get("kind", ""))
        if not name_ok(s[0]):
            continue
        parts.append(("" if first else ",") + '{"metric":"' + s[0] + '"')
        if s[1]:
            parts.append(',"unit":' + _str(s[1]))
        if len(s) > 2 and s[2]:
            parts.append(',"kind":' + _str(s[2]))
        parts.append("}")
        first = False
    parts.append('],"commands":[')
    first = True
    for c in commands:
        if isinstance(c, dict):
            c = (c["name"], c.get("description", ""), c.get("args", {}))
        if not name_ok(c[0]):
            continue
        parts.append(("" if first else ",") + '{"name":"' + c[0] + '"')
        if c[1]:
            parts.append(',"description":' + _str(c[1]))
        if c[2]:
            args = c[2]
            parts.append(',"args":{' + ",".join(
                '"' + a + '":' + _str(args[a]) for a in args if name_ok(a)) + "}")
        parts.append("}")
        first = False
    parts.append('],"info":')
    parts.append(_info_json(info or {}))
    parts.append("}")
    return join(parts)  # the link's join writes into its preallocated frame buffer

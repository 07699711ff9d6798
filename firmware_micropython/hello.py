# iotgw firmware: the `hello` message (docs/protocol.md 4.1), rendered once at start.
#
# hellobuf.py imports this module once at start, renders the hello's unchanging parts
# into the link's frame buffer and unloads it again (ws.unload): the command descriptions
# and this builder hold no heap afterwards (and only if they did not fit, per session).
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
    """(name, description, {arg: description}) for each command name, one at a time (a
    generator: hello renders each before the next is made)."""
    joined = ", ".join(sorted(outputs))
    # in the agent's order (a MicroPython dict has none): the page offers the first one
    order = ("ping", "read_now", "set_interval", "set", "toggle", "blink")
    for name in [n for n in order if n in names] + [n for n in names if n not in order]:
        d = DESCRIPTIONS.get(name, ("", {}))
        args = {}
        for a in d[1]:
            args[a] = d[1][a] % joined if "%s" in d[1][a] else d[1][a]
        yield name, d[0], args


def hello(stream, agent, last_acked=0, sensors=(), commands=(), buffered=0, dropped=0,
          info=None, device=None, protocol=PROTOCOL, into=None):
    """Text of `hello`. sensors: (metric, unit, kind) tuples or dicts;
    commands: (name, description, {arg: description}) tuples or dicts.

    With `into` (a bytearray: the link's frame buffer, free between sessions) the text is
    written there piece by piece, no list of its parts and no copy: -> a memoryview of it,
    or None if it does not fit (commands, a generator, is then used up)."""
    if into is None:
        parts = []
        _render(parts.append, stream, agent, last_acked, sensors, commands, buffered, dropped, info, device,
                protocol)
        return "".join(parts)
    pos = [0]

    def put(text):
        m = memoryview(text)  # a str's UTF-8 bytes
        end = pos[0] + len(m)
        if end > len(into):
            raise IndexError
        into[pos[0] : end] = m
        pos[0] = end

    try:
        _render(put, stream, agent, last_acked, sensors, commands, buffered, dropped, info, device, protocol)
    except IndexError:
        return None
    return memoryview(into)[: pos[0]]


def _render(put, stream, agent, last_acked, sensors, commands, buffered, dropped, info, device, protocol):
    put('{"type":"hello","stream":')
    put(json.dumps(stream))
    put(',"agent":')
    put(_str(agent))
    put(',"protocol":%d' % protocol)
    if device:
        put(',"device":')
        put(json.dumps(device))
    put(',"last_acked":%d,"buffered":%d,"dropped":%d' % (last_acked, buffered, dropped))
    put(',"sensors":[')
    first = True
    for s in sensors:
        if isinstance(s, dict):
            s = (s["metric"], s.get("unit", ""), s.get("kind", ""))
        if not name_ok(s[0]):
            continue
        put(("" if first else ",") + '{"metric":"' + s[0] + '"')
        if s[1]:
            put(',"unit":' + _str(s[1]))
        if len(s) > 2 and s[2]:
            put(',"kind":' + _str(s[2]))
        put("}")
        first = False
    put('],"commands":[')
    first = True
    for c in commands:
        if isinstance(c, dict):
            c = (c["name"], c.get("description", ""), c.get("args", {}))
        if not name_ok(c[0]):
            continue
        put(("" if first else ",") + '{"name":"' + c[0] + '"')
        if c[1]:
            put(',"description":' + _str(c[1]))
        if c[2]:
            args = c[2]
            put(',"args":{')
            sep = ""
            for a in args:
                if name_ok(a):
                    put(sep + '"' + a + '":' + _str(args[a]))
                    sep = ","
            put("}")
        put("}")
        first = False
    put('],"info":')
    put(_info_json(info or {}))
    put("}")

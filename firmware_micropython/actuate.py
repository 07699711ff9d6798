# iotgw firmware: set, toggle and blink, in the vocabulary the Raspberry Pi agent speaks, word
# for word: arguments, values, results and errors (docs/commands.md, "Actuators: one
# vocabulary"; tests/vectors/actuators.json holds both to it).
#
# Loaded only for those three commands and unloaded afterwards (appcmd.py): the other commands
# (an update's many `ota` chunks) do not pay for it. A running blink is a task of this module's
# code; any set or toggle of its output cancels it.
import asyncio

from command import BadArguments  # loaded: it is running this command

ON = ("on", "true", "1", "yes", "high")
OFF = ("off", "false", "0", "no", "low")
ARGS = {"set": ("target", "value"), "toggle": ("target",), "blink": ("target", "on_time", "off_time", "n")}


async def run(outputs, name, args):
    """Run set/toggle/blink on one of outputs ({name: driver}); the output's state after."""
    if "output" in args:  # the deprecated name of target (firmware before the shared vocabulary)
        if "target" in args:
            raise BadArguments("give target or output (its old name), not both")
        args["target"] = args.pop("output")
    accepted = ARGS[name]
    for key in args:
        if key not in accepted:
            raise BadArguments("unknown argument %r; %s accepts: %s" % (key, name, ", ".join(accepted)))
    needed = accepted[:2] if name == "set" else accepted[:1]
    if len(outputs) == 1:
        needed = needed[1:]
        args.setdefault("target", next(iter(outputs)))
    for key in needed:
        if key not in args:
            raise BadArguments("missing argument %r; %s needs: %s" % (key, name, ", ".join(needed)))
    out = outputs.get(args["target"]) if isinstance(args["target"], str) else None
    if out is None:
        raise BadArguments("unknown target %r; actuators: %s" % (args["target"], ", ".join(sorted(outputs))))
    pwm = out.kind == "pwm_led"
    if name == "set":
        value = _value(out, pwm, args["value"])
    elif name == "toggle":
        value = 1 - out.value if pwm else not out.value
    else:
        on = _number(args, "on_time", 0.5, 0.01, 3600)
        off = _number(args, "off_time", 0.5, 0.01, 3600)
        n = _number(args, "n", 3, 0, 100000)
        if n != int(n):
            raise BadArguments("n must be a whole number, not %r" % args["n"])
        value = 1.0 if pwm else True
    if out.blinker is not None:  # any set or toggle stops a blink
        out.blinker.cancel()
        out.blinker = None
    out.set(value)
    state = {"target": args["target"], "type": out.kind, "value": out.value, "pin": out.gpio,
             "pin_state": out.level()}
    if name == "blink":
        n = int(n) or None
        out.blinker = asyncio.create_task(_blink(out, 0.0 if pwm else False, on, off, n))
        state["blinking"] = {"on_time": on, "off_time": off, "n": n}
    return state


async def _blink(out, low, on, off, n):
    high = out.value
    i = 0
    while n is None or i < n:
        out.set(high)
        await asyncio.sleep(on)
        out.set(low)
        await asyncio.sleep(off)
        i += 1
    out.blinker = None


def _value(out, pwm, v):
    if isinstance(v, str) and v.lower() in ON + OFF:
        on = v.lower() in ON
        return (1.0 if on else 0.0) if pwm else on
    if isinstance(v, bool):
        return (1.0 if v else 0.0) if pwm else v
    if pwm:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = -1.0
        if 0 <= f <= 1:
            return f
        raise BadArguments("value for %s must be a level from 0 to 1 or on/off, not %r" % (out.name, v))
    if isinstance(v, (int, float)) and v in (0, 1):
        return v == 1
    raise BadArguments("value for %s must be on or off (true/false, 1/0), not %r" % (out.name, v))


def _number(args, key, default, low, high):
    raw = args.get(key, default)
    try:
        v = -1.0 if isinstance(raw, bool) else float(raw)
    except (TypeError, ValueError):
        v = -1.0
    if not low <= v <= high:
        raise BadArguments("%s must be a number from %g to %g, not %r" % (key, low, high, raw))
    return v

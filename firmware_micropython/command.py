# iotgw firmware: running one gateway `command` and building its `result` (docs/commands.md).
#
# Loaded per command and unloaded afterwards (ws.unload): commands are rare, their
# code need not hold heap in between. A command id seen again (redelivered after a
# reconnect) gets the same answer without running again.
#
# Errors as the Raspberry Pi agent words them (docs/commands.md): BadArguments (raised by the
# handlers, e.g. actuate.py's) becomes "bad arguments: ...", anything else
# "NAME failed: ExceptionType: message".
import json

from compat import log
from proto import _INF, _str


async def run(link, msg):
    """The text of the `result` for command message msg (runs the handler at most once)."""
    cid = str(msg.get("id", ""))
    for r in link._recent:
        if r[0] == cid:  # redelivered after a reconnect: answer, do not run again
            return r[1]
    name = msg.get("name")
    deadline = msg.get("deadline") or 0
    log(1, "COMMAND", cid, name, msg.get("args"))
    if name not in link.commands:
        text = result(cid, False, error="unknown command: %s" % name)
    elif deadline and link.clock.synced and link.clock.now() > deadline:
        text = result(cid, False, error="deadline passed before the command ran")
    else:
        try:
            value = await link.on_command(name, msg.get("args") or {})
            text = result(cid, True, value)
        except BadArguments as exc:
            text = result(cid, False, error="bad arguments: %s" % exc)
        except Exception as exc:  # the command failed: that is its result, not the link's problem
            text = result(cid, False, error="%s failed: %s: %s" % (name, type(exc).__name__, exc))
    if len(link._recent) >= 8:
        link._recent.pop(0)
    link._recent.append((cid, text))
    return text


def result(cid, ok, value=None, error=None):
    parts = ['{"type":"result","id":', _str(cid), ',"ok":', "true" if ok else "false"]
    if value is not None:
        try:
            vj = _any_json(value)
        except (TypeError, ValueError):
            vj = _str(value)
        parts.append(',"value":')
        parts.append(vj)
    if error is not None:
        parts.append(',"error":')
        parts.append(_str(error))
    parts.append("}")
    return "".join(parts)


def _any_json(v):
    # result.value is free-form JSON, but never NaN/Infinity (not JSON).
    if isinstance(v, float) and (v != v or v == _INF or v == -_INF):
        return "null"
    if isinstance(v, dict):
        return "{" + ",".join(json.dumps(str(k)) + ":" + _any_json(v[k]) for k in v) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_any_json(x) for x in v) + "]"
    return json.dumps(v)


class BadArguments(ValueError):
    """Missing, unknown or unacceptable arguments: the error is "bad arguments: " + message."""

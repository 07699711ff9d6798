# iotgw firmware: device protocol v1 encoder (docs/protocol.md).
#
# Plain functions, no I/O: text in, text out. The gateway's codec
# (iotgw_common/protocol) is the reference; tests/firmware/test_proto.py checks
# that the gateway decodes everything the firmware builds to the expected
# message. `readings` and `event` frames are rendered by outbox.py straight from
# the ring, `hello` by hello.py (loaded once per session).
import json

from micropython import const

PROTOCOL = 1

# Limits of protocol v1 ("Limits"; frame bytes and samples per frame: link.py). Names with a
# leading underscore are const(): no global entry, no heap.
_MAX_VALUES = const(64)
_MAX_STRING_LENGTH = const(256)

# Close codes (gateway/protocol/errors.py CloseCode) and what a device does: link.py
# (close_delay in linkup.py). 1000 normal, 1008 policy violation, 4000 replaced,
# 4001/4003/4004/4005 the configuration must change (retry after the long delay).

_INF = float("inf")


def name_ok(name):
    """True if `name` matches ^[A-Za-z][A-Za-z0-9_.:-]{0,63}$ (metrics, events).

    Checked on the UTF-8 bytes: iterating a str makes a one-character str of each, and
    MicroPython interns those for good (a qstr each, never freed)."""
    if not isinstance(name, str) or not 1 <= len(name) <= 64:
        return False
    first = True
    for c in memoryview(name):
        if not (65 <= c <= 90 or 97 <= c <= 122 or (not first and (48 <= c <= 57 or c in b"_.:-"))):
            return False
        first = False
    return True


def value_json(v, max_str=_MAX_STRING_LENGTH):
    """JSON text of a reading's value, or None if v is not a valid value.

    Valid: bool, finite int/float, str of at most max_str characters.
    """
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and (v != v or v == _INF or v == -_INF):
            return None
        return json.dumps(v)
    if isinstance(v, str) and len(v) <= max_str:
        return json.dumps(v)
    return None


def values_json(values, max_values=_MAX_VALUES, max_str=_MAX_STRING_LENGTH, allow_empty=False):
    """Encode a {metric: value} map; returns (text, skipped).

    Entries with a bad name or value are skipped (and counted), as are those
    past max_values. text is None if nothing is left (and allow_empty is false):
    a readings sample needs at least one value.
    """
    parts = []
    skipped = 0
    for k in values:
        v = values[k]
        vj = value_json(v, max_str) if name_ok(k) and len(parts) < max_values else None
        if vj is None:
            skipped += 1
            continue
        parts.append('"' + k + '":' + vj)
    if not parts and not allow_empty:
        return None, skipped
    return "{" + ",".join(parts) + "}", skipped


def _info_json(info):
    parts = []
    for k in info:
        v = info[k]
        vj = value_json(v) if name_ok(k) and len(parts) < _MAX_VALUES else None
        if vj is not None:
            parts.append('"' + k + '":' + vj)
    return "{" + ",".join(parts) + "}"


def _str(s, limit=_MAX_STRING_LENGTH):
    return json.dumps(str(s)[:limit])


def status(buffered, dropped, info=None):
    return '{"type":"status","buffered":%d,"dropped":%d,"info":%s}' % (
        buffered, dropped, _info_json(info or {}))


def decode(text):
    """Parse one gateway frame; returns a dict with a str "type", or raises ValueError."""
    msg = json.loads(text)
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ValueError("not a protocol message")
    return msg

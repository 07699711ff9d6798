# iotgw firmware: device protocol v1 encoder (docs/protocol.md).
#
# Plain functions, no I/O: text in, text out. The gateway's codec
# (iotgw_common/protocol) is the reference; tests/firmware/test_proto.py checks
# that the gateway decodes everything the firmware builds to the expected
# message. `readings` and `event` frames are rendered by outbox.py straight from
# the ring, `hello` by hello.py (loaded once per session).
import json

PROTOCOL = 1

# Limits of protocol v1 ("Limits"); welcome.limits may lower them.
MAX_FRAME_BYTES = 65536
MAX_SAMPLES = 500
MAX_VALUES = 64
MAX_STRING_LENGTH = 256
MIN_TS = 946684800000  # 2000-01-01, earlier is refused as bad_timestamp
MAX_SEQ = 9007199254740991  # 2**53 - 1

# Close codes (gateway/protocol/errors.py CloseCode) and what a device does.
NORMAL = 1000
GOING_AWAY = 1001
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
SERVICE_RESTART = 1012
REPLACED = 4000
DEVICE_MISMATCH = 4001
HELLO_TIMEOUT = 4002
DEVICE_REMOVED = 4003
UNSUPPORTED_PROTOCOL = 4004
TOKEN_REVOKED = 4005

# "configuration must change": retry only after the long delay (5 min).
CONFIG_CLOSES = (DEVICE_MISMATCH, DEVICE_REMOVED, UNSUPPORTED_PROTOCOL, TOKEN_REVOKED)

_FIRST = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_REST = _FIRST + "0123456789_.:-"
_STREAM = _FIRST + "0123456789_-"
_INF = float("inf")


def name_ok(name):
    """True if `name` matches ^[A-Za-z][A-Za-z0-9_.:-]{0,63}$ (metrics, events)."""
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or name[0] not in _FIRST:
        return False
    for c in name:
        if c not in _REST:
            return False
    return True


def stream_ok(stream):
    if not isinstance(stream, str) or not 1 <= len(stream) <= 64:
        return False
    for c in stream:
        if c not in _STREAM:
            return False
    return True


def value_json(v, max_str=MAX_STRING_LENGTH):
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


def values_json(values, max_values=MAX_VALUES, max_str=MAX_STRING_LENGTH, allow_empty=False):
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
        vj = value_json(v) if name_ok(k) and len(parts) < MAX_VALUES else None
        if vj is not None:
            parts.append('"' + k + '":' + vj)
    return "{" + ",".join(parts) + "}"


def _str(s, limit=MAX_STRING_LENGTH):
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

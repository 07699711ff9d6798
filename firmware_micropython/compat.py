# iotgw firmware: every port difference lives here (microdot's helpers.py idea).
#
# The rest of the firmware imports time, randomness, memory and logging from
# this module, so it runs unchanged on an ESP32, a Pico W and the unix port.
import gc
import sys
import time

ticks_ms = time.ticks_ms
ticks_diff = time.ticks_diff
ticks_add = time.ticks_add
sleep_ms = time.sleep_ms

VERSION = "0.1.0"
AGENT = "iotgw-fw/" + VERSION

# The unix port has a `machine` module too, but without Pin: that is how a
# board is told apart from a computer.
try:
    import machine

    BOARD = hasattr(machine, "Pin")
except ImportError:
    machine = None
    BOARD = False

PLATFORM = sys.platform

try:
    from os import urandom
except ImportError:  # pragma: no cover - every supported port has it
    import random

    def urandom(n):
        return bytes(random.getrandbits(8) for _ in range(n))


def rand_below(n):
    """Uniform random integer in [0, n) for backoff jitter (n >= 1)."""
    if n <= 1:
        return 0
    r = int.from_bytes(urandom(4), "big")
    return r % n


def hexid(nbytes):
    return "".join("%02x" % b for b in urandom(nbytes))


def mem_free():
    return gc.mem_free()


def mem_alloc():
    return gc.mem_alloc()


def collect():
    gc.collect()


def wall_ms():
    """The host's wall clock in ms, for log lines only (never for timestamps).

    A board has no trustworthy clock before sync; this is meaningful on the
    unix port, where the tests compare it with what the gateway stored.
    """
    try:
        return time.time_ns() // 1000000
    except AttributeError:
        return int(time.time() * 1000)


def getenv(name):
    try:
        import os

        return os.getenv(name)
    except (ImportError, AttributeError):
        return None


def argv():
    return getattr(sys, "argv", [])


# Log levels: 0 errors only, 1 info, 2 debug. Set from config["log_level"].
LEVEL = [1]


def log(level, *args):
    if level <= LEVEL[0]:
        print(*args)


def print_exception(exc):
    try:
        sys.print_exception(exc)
    except AttributeError:  # pragma: no cover
        print(repr(exc))

# iotgw firmware: every port difference lives here (microdot's helpers.py idea).
#
# The rest of the firmware imports time, randomness, memory and logging from
# this module, so it runs unchanged on an ESP32, a Pico W and the unix port.
import gc
import sys
import time
from os import urandom  # every supported port has it

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
ROOT = ""  # where the firmware files are ("" on a board: the filesystem's root; main.py runs there)
CWD = ""  # the unix port: the directory main.py was started from (main.py)
OTA_TRIAL = None  # the version on trial after an update (otaboot.py), else None
OTA_LAST = None  # what the last update did, for hello


def reset():
    """Restart the board (machine.reset). The unix port exits with status 3 instead: the
    tests' runner starts it again, as a board would restart."""
    if BOARD:
        machine.reset()
    sys.exit(3)


def rand_below(n):
    """Uniform random integer in [0, n) for backoff jitter (n >= 1)."""
    if n <= 1:
        return 0
    r = int.from_bytes(urandom(4), "big")
    return r % n


# Aliases, not wrappers: a function costs heap on a board, a name in this module little.
mem_free = gc.mem_free
mem_alloc = gc.mem_alloc
collect = gc.collect


def wall_ms():
    """The host's wall clock in ms, for log lines only (never for timestamps).

    A board has no trustworthy clock before sync; this is meaningful on the
    unix port, where the tests compare it with what the gateway stored.
    """
    try:
        return time.time_ns() // 1000000
    except AttributeError:
        return int(time.time() * 1000)


# Surviving a reset: on an ESP32 the RTC memory keeps a few bytes through a soft or
# watchdog reset (not a power cut); the unix port uses the file named by the config
# key "state_file" (tests). Other ports keep nothing: a reset there starts a new stream
# whose loss is not counted. Layout: b"IOTG", then the unacked count (u32).
STATE_FILE = [None]


def _rtc():
    try:
        r = machine.RTC()
        r.memory()
        return r
    except (AttributeError, TypeError, OSError):
        return None


def save_state(buf, unacked):
    """Record how many samples a reset now would lose (buf: a preallocated bytearray)."""
    buf[0:4] = b"IOTG"
    buf[4] = unacked & 0xFF
    buf[5] = (unacked >> 8) & 0xFF
    buf[6] = (unacked >> 16) & 0xFF
    buf[7] = (unacked >> 24) & 0xFF
    if BOARD:
        r = _rtc()
        if r is not None:
            r.memory(buf[:8])
    elif STATE_FILE[0]:
        with open(STATE_FILE[0], "wb") as f:
            f.write(buf[:8])


def getenv(name):
    try:
        import os

        return os.getenv(name)
    except (ImportError, AttributeError):
        return None


def argv():
    return getattr(sys, "argv", [])


# Fault injection (tests only): FAULT[0] is None on a board. fault(site) is called
# just before each allocation of the sample -> frame -> send path; the config key
# "fault" {site, every} (linkup.setup) makes every `every`-th call at `site` ("*": any)
# raise MemoryError there. FAULT: [site or None, every, calls so far].
FAULT = [None, 1, 0]


def fault(site):
    f = FAULT
    if f[0] is not None and (f[0] == site or f[0] == "*"):
        f[2] += 1
        if not f[2] % f[1]:
            print("FAULT", site)
            raise MemoryError("injected at " + site)


# Log levels: 0 errors only, 1 info, 2 debug. Set from config["log_level"].
LEVEL = [1]


def log(level, *args):
    if level <= LEVEL[0]:
        print(*args)


print_exception = sys.print_exception

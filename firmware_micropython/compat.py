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
ROOT = ""  # where the firmware files are ("" on a board: the filesystem's root)
OTA_TRIAL = None  # the version on trial after an update (otaboot.py), else None
OTA_LAST = None  # what the last update did, for hello


def reset():
    """Restart the board (machine.reset). The unix port exits with status 3 instead: the
    tests' runner starts it again, as a board would restart."""
    if BOARD:
        machine.reset()
    sys.exit(3)

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


MIN_YEAR = 2025  # a clock before this was never set (boards boot at 2000-01-01)


def clock_ok():
    """True when the real-time clock holds a plausible date (needed before TLS checks)."""
    return time.gmtime()[0] >= MIN_YEAR


def set_clock(unix_s):
    """Set the real-time clock to unix_s (seconds since 1970); False if this port cannot.

    Boards: machine.RTC. The unix port uses the host's clock; under libfaketime (the
    tests' board that boots at 2000-01-01) it writes FAKETIME_TIMESTAMP_FILE instead.
    """
    if time.gmtime(0)[0] == 2000:
        unix_s -= 946684800  # ports whose epoch is 2000
    tm = time.gmtime(unix_s)
    if BOARD:
        machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6], tm[3], tm[4], tm[5], 0))
        return True
    path = getenv("FAKETIME_TIMESTAMP_FILE")
    if not path:
        return False
    with open(path, "w") as f:
        f.write("@%04d-%02d-%02d %02d:%02d:%02d\n" % tm[:6])
    return True


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


def lost_at_boot(buf):
    """Samples the previous run had not had acknowledged when it stopped (0 if unknown)."""
    data = b""
    if BOARD:
        r = _rtc()
        data = r.memory() if r is not None else b""
    elif STATE_FILE[0]:
        try:
            with open(STATE_FILE[0], "rb") as f:
                data = f.read()
        except OSError:
            data = b""
    if len(data) < 8 or data[:4] != b"IOTG":
        return 0
    save_state(buf, 0)
    return data[4] | (data[5] << 8) | (data[6] << 16) | (data[7] << 24)


def getenv(name):
    try:
        import os

        return os.getenv(name)
    except (ImportError, AttributeError):
        return None


def argv():
    return getattr(sys, "argv", [])


# Fault injection (tests only): FAULT[0] is None on a board. fault(site) is called
# just before each allocation of the sample -> frame -> send path; a test installs
# inject() through the config key "fault" to raise MemoryError there.
FAULT = [None]


def fault(site):
    f = FAULT[0]
    if f is not None and f(site):
        raise MemoryError("injected at " + site)


def inject(site, every):
    """Raise MemoryError at every `every`-th call of fault(site) ("*": any site)."""
    n = [0]

    def f(s):
        if site != "*" and s != site:
            return False
        n[0] += 1
        if n[0] % every:
            return False
        print("FAULT", s)
        return True

    FAULT[0] = f


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

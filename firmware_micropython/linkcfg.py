# iotgw firmware: the link's configuration, read once at boot (docs/firmware.md, "Memory").
#
# Link() imports this module for setup() and unloads it afterwards (ws.unload).

import compat
import ws as wsmod
from compat import collect, log, urandom
from micropython import const

_MAX_FRAME_BYTES = const(65536)  # protocol v1 limits; welcome.limits may lower them
_MAX_SAMPLES = const(500)


def buffer_bytes(cfg):
    """The ring's size: config `buffer_bytes`, else what the heap allows, at most 8 KB.

    A connection needs about `heap_reserve` bytes (28 KB; 68 KB for wss:// where mbedtls
    allocates from the MicroPython heap, all ports but ESP32) beside the resident code and the
    ring: the drivers and the app, the frame and hello buffers, the handshake's code and
    objects, a session, room for the heap to fragment. The ring gets half of what is free
    beyond that, in 512-byte steps, between 1 and 8 KB: 8 KB on every board (the code is
    half the size there), 2 KB in the tests' 84 KB heap on the 64-bit unix port.
    """
    n = cfg.get("buffer_bytes")
    if n:
        return n
    reserve = cfg.get("heap_reserve")
    if reserve is None:
        reserve = 28672
        if cfg["url"].startswith("wss://") and compat.PLATFORM != "esp32":
            reserve += 40960  # mbedtls allocates from this heap (not ESP32's: the IDF heap)
    collect()
    n = (compat.mem_free() - reserve) // 2
    return max(1024, min(8192, n & ~511))


def lost_at_boot(buf):
    """Samples the previous run had not had acknowledged when it stopped (0 if unknown):
    what compat.save_state wrote where a reset keeps it (ESP32 RTC memory, state_file)."""
    data = b""
    if compat.BOARD:
        r = compat._rtc()
        data = r.memory() if r is not None else b""
    elif compat.STATE_FILE[0]:
        try:
            with open(compat.STATE_FILE[0], "rb") as f:
                data = f.read()
        except OSError:
            data = b""
    if len(data) < 8 or data[:4] != b"IOTG":
        return 0
    compat.save_state(buf, 0)
    return data[4] | (data[5] << 8) | (data[6] << 16) | (data[7] << 24)


def setup(link, cfg):
    import outbox

    compat.LEVEL[0] = cfg.get("log_level", 1)
    compat.STATE_FILE[0] = cfg.get("state_file")  # unix port: where a reset's loss is noted
    f = cfg.get("fault")
    if f:  # tests only: MemoryError at one allocation site (compat.fault)
        compat.FAULT[0], compat.FAULT[1] = f["site"], f["every"]

    link.url = cfg["url"]
    link.token = cfg.get("token")
    link.device = cfg.get("device")
    link.ca_file = cfg.get("ca_file")
    link.insecure = cfg.get("tls_insecure", False)
    link.ntp = cfg.get("ntp", "pool.ntp.org" if compat.BOARD else None)
    # The gateway's resolved address, cached between sessions, and the DNS server.
    link._addr = [None, cfg.get("dns")]
    link.max_message = cfg.get("max_message_bytes", 8192)
    link.status_ms = int(cfg.get("status_interval_s", 60) * 1000)
    link.silence_ms = int(cfg.get("silence_timeout_s", 60) * 1000)
    link.trace = cfg.get("trace", False)
    b = cfg.get("backoff", {})
    link.base_ms = int(b.get("base_s", 1) * 1000)
    link.cap_ms = int(b.get("cap_s", 60) * 1000)
    link.long_ms = int(b.get("long_s", 300) * 1000)
    link.replaced_ms = int(b.get("replaced_s", 60) * 1000)
    link.stable_ms = int(b.get("stable_s", 10) * 1000)  # a session this long resets the backoff
    # A board loses its RAM buffer on reboot: new stream, new seq space.
    link.stream = "fw-" + "".join("%02x" % b for b in urandom(8))
    # What a reset would lose (the ring's unacked samples), kept where it survives one
    # (compat.save_state): the next boot counts it in `dropped` and reports it.
    link._state = bytearray(8)
    link.lost_at_boot = lost_at_boot(link._state)
    if link.lost_at_boot:
        log(0, "BOOT lost %d unacked samples in the reset" % link.lost_at_boot)
    link.clock = outbox.Clock()
    # The ring and the frame buffer first: the largest blocks, while the heap is in one piece.
    link.buffer_bytes = buffer_bytes(cfg)
    link.out = outbox.Outbox(link.buffer_bytes, cfg.get("window", 4),
                             min(cfg.get("max_frame_bytes", 2048), _MAX_FRAME_BYTES),
                             min(cfg.get("batch_samples", 50), _MAX_SAMPLES), link.clock)
    link.acked = 0
    link.sent_seq = 0  # highest seq sent in the current session
    link.skipped = 0  # values skipped as invalid (bad name, NaN, ...)
    link.sessions = 0
    link.connected = None  # ticks_ms() at the welcome while a session is up
    link._wake = False  # set to wake the sender (link._sender)
    link._rx_exc = None
    link._ws = None
    link._stopping = False
    link._wsbufs = wsmod.buffers()  # each connection's WebSocket reuses them
    # hello's unchanging parts, rendered once (linkup.hello_text): (head, rest) lengths
    link._hbuf = bytearray(cfg.get("hello_bytes", 1280))
    link._hlen = None
    link._recent = []  # (command id, result text), last 8: a redelivered command is not run twice

# iotgw firmware: what the link runs only at a session's start or end (docs/firmware.md, "Memory").
#
# link.py imports this module for one call and unloads it afterwards (ws.unload): the
# config, TLS and the clock, hello and welcome, close codes and gateway errors hold no
# heap while a session streams. Every function takes the Link as its first argument.

import compat
import proto
import ws as wsmod
from compat import collect, log, rand_below, ticks_ms
from micropython import const

# Close codes (gateway/protocol/errors.py CloseCode) and what a device does.
_POLICY_VIOLATION = const(1008)
_REPLACED = const(4000)
# "configuration must change": retry only after the long delay (5 min).
CONFIG_CLOSES = (4001, 4003, 4004, 4005)  # device mismatch, removed, unsupported protocol, token revoked


def hello_text(link):
    """The hello, written into the frame buffer (no frame is built between sessions): the
    unchanging parts kept by hellobuf.py at start, plus the counters and info."""
    if not link._hlen:  # not kept (yet): hellobuf.py renders it (with hello.py)
        import hellobuf

        try:
            text = hellobuf.run(link)
        finally:
            wsmod.unload("hellobuf")
        if text is not None:
            return text
    counters = ',"last_acked":%d,"buffered":%d,"dropped":%d' % (link.acked, link.buffered, link.dropped)
    info = proto._info_json(link.info())
    h, n = link._hlen
    mv = memoryview(link._hbuf)
    return link.out.fill((mv[:h], counters, mv[h : h + n], ',"info":', info, "}"))


async def _tls(link):
    """The TLS context for wss://: verified against ca_file once the clock is set."""
    if link.insecure:
        log(0, "LINK warning: tls_insecure, the gateway is not verified")
        return False
    if not link.ca_file:
        raise wsmod.HandshakeError("wss:// without ca_file: set ca_file (or tls_insecure)", 0)
    import timesync

    try:
        ok = await timesync.ensure(link.url, link.ntp, link._addr)
    finally:
        wsmod.unload("timesync")
    if not ok:
        raise OSError("clock not set: TLS cannot check the certificate yet")
    return wsmod.ssl_context(link.ca_file)


async def prepare(link):
    """Before connecting: the clock and the TLS context for wss://, and the hello text
    (in the frame buffer: no frame is built between sessions). -> (ctx, hello)."""
    ctx = None
    if link.url.startswith("wss://"):
        ctx = await _tls(link)
    log(1, "LINK connecting to", link.url)
    collect()
    return ctx, hello_text(link)


async def welcome(link, ws, t0):
    """After hello went out at t0: wait for welcome and apply it."""
    msg = await wsmod.wait_for_ms(_await_welcome(link, ws), 10000)
    _on_welcome(link, msg, t0, ticks_ms())


async def _await_welcome(link, ws):
    while True:
        msg = link._decode(await ws.recv())
        if msg is None:
            continue
        if msg["type"] == "welcome":
            return msg
        if msg["type"] == "error":
            on_error(link, msg)
        else:
            log(1, "LINK ignoring %s before welcome" % msg["type"])


def _on_welcome(link, msg, t0, t1):
    link.clock.sync(int(msg["server_time"]), t0, t1)
    last = int(msg.get("last_seq", 0))
    out = link.out
    # Frames the gateway has stored are done; the rest are resent in order.
    out.acked(last)
    link._save()
    if last > link.acked:
        link.acked = last
    if out.next_seq <= last:
        out.next_seq = last + 1
    link.sent_seq = 0
    limits = msg.get("limits") or {}
    if "max_frame_bytes" in limits:
        out.max_frame = min(out.max_frame, int(limits["max_frame_bytes"]))
    if "max_samples" in limits:
        out.batch = max(1, min(out.batch, int(limits["max_samples"])))
    link.connected = ticks_ms()
    log(1, "LINK welcome device=%s last_seq=%d rtt=%d ms resend=%d"
        % (msg.get("device"), last, link.clock.rtt, out.n))
    settings = msg.get("settings") or {}
    if link.on_command is not None and (settings or compat.OTA_TRIAL):
        link.on_command("welcome", settings)  # appcmd.welcome: loaded only when there is something to do


def on_error(link, msg):
    code = msg.get("code")
    seq = msg.get("seq")
    log(0, "LINK gateway error %s seq=%s: %s" % (code, seq, msg.get("detail")))
    if seq is None or code == "seq_not_increasing":
        # Not stored again, but a well-behaved stream gets it covered by an ack.
        return
    # The frame was refused and nothing of it stored: resending cannot help.
    if link.out.refused(seq):
        link._save()
        link._wake = True


def close_delay(link, code, reason):
    """Delay (ms) before reconnecting after the gateway closed with code, or None for backoff."""
    if code == _REPLACED:
        log(0, "LINK !!! closed 4000: another connection uses this device's token;"
               " two devices may share a token !!!")
        return link.replaced_ms + rand_below(link.base_ms + 1)
    if code in CONFIG_CLOSES:
        log(0, "LINK closed %d (%s): fix the configuration; retrying in %d s"
            % (code, reason, link.long_ms // 1000))
        return link.long_ms
    if code == _POLICY_VIOLATION:
        log(0, "LINK closed 1008: too many refused frames (%s)" % reason)
        return link.replaced_ms
    log(1, "LINK closed %d %s" % (code, reason))
    return None

# iotgw firmware: set the clock before TLS checks a certificate (docs/firmware.md, "Time").
#
# A board boots at 2000-01-01; mbedtls then refuses every valid certificate
# ("validity starts in the future"). Before a wss:// connection, when the clock is
# not set, the link asks, in order:
#   1. NTP (config "ntp", default pool.ntp.org on a board): one SNTP query (RFC 4330)
#      over a non-blocking UDP socket;
#   2. the gateway itself: the HTTP `Date` header of an unauthenticated, unverified
#      TLS request (no token is sent), accurate to a second.
# Neither source is authenticated, so a forged time can only make verification
# fail or accept a certificate the CA issued anyway: the chain is still checked.
# Loaded for the sync only and unloaded afterwards, like wsopen.py.
import asyncio
import socket
import time

import compat
import ws as wsmod
from compat import log, ticks_add, ticks_diff, ticks_ms

NTP_DELTA = 2208988800  # 1900-01-01 to 1970-01-01, in seconds
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


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
    if compat.BOARD:
        compat.machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6], tm[3], tm[4], tm[5], 0))
        return True
    path = compat.getenv("FAKETIME_TIMESTAMP_FILE")
    if not path:
        return False
    with open(path, "w") as f:
        f.write("@%04d-%02d-%02d %02d:%02d:%02d\n" % tm[:6])
    return True


async def ensure(url, ntp, addr, timeout_ms=10000):
    """Set the clock if it is not; returns True when it is set (or was)."""
    if clock_ok():
        return True
    end = ticks_add(ticks_ms(), timeout_ms)
    t = None
    if ntp:
        try:
            t = await sntp(ntp, end, addr[1])
            log(1, "TIME from NTP", ntp)
        except (OSError, IndexError) as exc:
            log(0, "TIME NTP %s failed: %r" % (ntp, exc))
    if t is None:
        try:
            t = await http_date(url, addr, end)
            log(1, "TIME from the gateway's Date header")
        except (OSError, ValueError, IndexError, asyncio.TimeoutError) as exc:
            log(0, "TIME from the gateway failed: %r" % (exc,))
            return False
    if not set_clock(t):
        log(0, "TIME this port cannot set its clock")
        return False
    log(1, "TIME set to %d" % t)
    return clock_ok()


async def sntp(host, end, ns=None):
    """Unix time (s) from an SNTP server, without blocking the loop."""
    port = 123
    if ":" in host:
        host, port = host.split(":")
        port = int(port)
    import wsopen

    try:
        dest = (await wsopen.resolve(host, port, end, ns))[-1]
    finally:
        wsmod.unload("wsopen")
    q = bytearray(48)
    q[0] = 0x1B  # LI 0, version 3, mode 3 (client)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    try:
        retry = ticks_ms()
        while ticks_diff(end, ticks_ms()) > 0:
            if ticks_diff(ticks_ms(), retry) >= 0:
                s.sendto(q, dest)
                retry = ticks_add(ticks_ms(), 1000)
            try:
                r = s.recv(48)
            except OSError:
                await asyncio.sleep_ms(20)
                continue
            secs = (r[40] << 24) | (r[41] << 16) | (r[42] << 8) | r[43]
            if len(r) >= 48 and secs:
                return secs - NTP_DELTA
        raise OSError("no NTP answer")
    finally:
        s.close()


async def http_date(url, addr, end):
    """Unix time (s) from the Date header of the gateway's answer to a plain GET."""
    import wsopen

    try:
        secure, host, port, path = wsopen.parse_url(url)
        if addr[0] is None:
            addr[0] = await wsopen.resolve(host, port, end, addr[1])
        ctx = wsopen.ssl_context(None) if secure else None
        sock = await wsopen._tcp(addr[0], ctx, host, end)
        try:  # the socket read and written as the WebSocket's, its lines read as the handshake's
            return await wsmod.wait_for_ms(_date(wsopen, wsmod.WebSocket(sock, 0), path, host),
                                           max(1, ticks_diff(end, ticks_ms())))
        finally:
            wsmod.close_quietly(sock)
    finally:
        wsmod.unload("wsopen")


async def _date(wsopen, ws, path, host):
    await ws._write(memoryview(b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host)))
    for _ in range(32):
        line = await wsopen._line(ws)
        if not line or line == b"\r\n":
            break
        if line[:5].lower() == b"date:":
            return parse_date(line[5:].strip().decode())
    raise ValueError("no Date header")


def parse_date(text):
    """Unix time (s) of an RFC 9110 IMF-fixdate: 'Sun, 06 Nov 1994 08:49:37 GMT'."""
    p = text.split()
    day, mon, year = int(p[1]), MONTHS.index(p[2]) + 1, int(p[3])
    hh, mm, ss = [int(x) for x in p[4].split(":")]
    # days from civil (H. Hinnant's algorithm)
    y = year - (mon <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (mon + (-3 if mon > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    return days * 86400 + hh * 3600 + mm * 60 + ss

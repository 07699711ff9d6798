# iotgw firmware: the WebSocket opening handshake (RFC 6455 section 4, client side).
#
# Loaded by ws.connect() for the handshake only and unloaded afterwards (see
# ws.py): URL parsing, name resolution, the TLS context, the HTTP upgrade.
import asyncio
import binascii
import hashlib
import select
import socket
from errno import EAGAIN, EINPROGRESS

from compat import ticks_add, ticks_diff, ticks_ms, urandom
from ws import HandshakeError, close_quietly, wait_for_ms

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # section 1.3
MAX_HEADER_LINES = 32
MAX_HEADER_LINE = 1024


def parse_url(url):
    """ws[s]://host[:port][/path] -> (secure, host, port, path)."""
    if url.startswith("ws://"):
        secure, rest = False, url[5:]
    elif url.startswith("wss://"):
        secure, rest = True, url[6:]
    else:
        raise ValueError("URL must start with ws:// or wss://")
    i = rest.find("/")
    hostport, path = (rest, "/") if i < 0 else (rest[:i], rest[i:])
    port = 443 if secure else 80
    if hostport.startswith("["):  # [IPv6]:port
        j = hostport.find("]")
        host = hostport[1:j]
        if hostport[j + 1 : j + 2] == ":":
            port = int(hostport[j + 2 :])
    elif ":" in hostport:
        host, p = hostport.rsplit(":", 1)
        port = int(p)
    else:
        host = hostport
    if not host:
        raise ValueError("URL has no host")
    return secure, host, port, path


def accept_key(key):
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (section 4.2.2, item 5.4)."""
    return binascii.b2a_base64(hashlib.sha1(key + GUID).digest())[:-1]


def ssl_context(ca_file=None):
    """A client TLS context: verifies the server against ca_file (PEM or DER); without
    one it does not verify (the caller must have been told so: tls_insecure)."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file:
        with open(ca_file, "rb") as f:
            data = f.read()
        try:
            ctx.load_verify_locations(cadata=data)
        except ValueError:
            # Some builds' mbedtls parse DER only: decode the first PEM block.
            ctx.load_verify_locations(cadata=pem_to_der(data))
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def pem_to_der(pem):
    """DER bytes of the first certificate in PEM text (RFC 7468)."""
    start = pem.find(b"-----BEGIN CERTIFICATE-----")
    end = pem.find(b"-----END CERTIFICATE-----", start)
    if start < 0 or end < 0:
        raise ValueError("no PEM certificate in ca_file")
    body = pem[start + 27 : end]
    return binascii.a2b_base64(b"".join(body.split()))


async def connect(ws, url, token, headers, ssl, timeout_ms, addr=None):
    """See ws.connect: opens ws (a WebSocket without its socket yet). addr: [resolved
    address or None, DNS server or None], the caller's cache; it clears addr[0] after a
    failure so that DNS runs again."""
    secure, host, port, path = parse_url(url)
    if secure and ssl is None:
        raise HandshakeError("wss:// needs a CA to verify the gateway (ca_file), or tls_insecure")
    if secure and ssl is False:
        ssl = ssl_context()  # explicitly unverified
    if addr is None:
        addr = [None, None]
    sock = None
    end = ticks_add(ticks_ms(), timeout_ms)
    try:
        if addr[0] is None:
            addr[0] = await resolve(host, port, end, addr[1])
        sock = ws._s = await _tcp(addr[0], secure and ssl, host, end)
        key = binascii.b2a_base64(urandom(16))[:-1]
        await wait_for_ms(_handshake(ws, host, port, secure, path, key, token, headers),
                          max(1, ticks_diff(end, ticks_ms())))
    except asyncio.TimeoutError:
        close_quietly(sock)
        raise HandshakeError("opening handshake timed out")
    except ValueError as exc:  # MicroPython's TLS reports a bad certificate this way
        close_quietly(sock)
        raise HandshakeError("TLS handshake failed: %s" % str(exc).strip())
    except BaseException:
        close_quietly(sock)
        raise


async def _tcp(ai, ctx, host, end):
    s = socket.socket(ai[0], socket.SOCK_STREAM)
    try:
        # Nagle off on the TCP socket itself, before TLS wraps it (an SSL socket
        # refuses setsockopt): a frame's last piece must not wait for a delayed ACK.
        s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY
    except (AttributeError, OSError, TypeError, ValueError):
        pass  # ports without TCP_NODELAY keep Nagle
    s.setblocking(False)
    try:
        s.connect(ai[-1])
    except OSError as exc:
        if exc.errno not in (EINPROGRESS, EAGAIN):
            s.close()
            raise
    # Wait for the connection with select-free polling (the sampler keeps running).
    poller = select.poll()
    poller.register(s, select.POLLOUT)
    while not poller.poll(0):
        if ticks_diff(end, ticks_ms()) <= 0:
            s.close()
            raise asyncio.TimeoutError
        await asyncio.sleep_ms(20)
    if ctx:
        s = ctx.wrap_socket(s, server_hostname=host, do_handshake_on_connect=False)
        s.setblocking(False)
    return s


def _literal(host):
    for c in host:
        if c not in "0123456789.":
            return False
    return host.count(".") == 3


async def resolve(host, port, end, ns=None):
    """getaddrinfo-like (family, ..., sockaddr) for host, without blocking the loop:
    an IP literal as is, otherwise one DNS A query over a non-blocking UDP socket
    (RFC 1035 section 4) to ns ("ip" or "ip:port"; default the network's DNS
    server), repeated each second until `end` (ticks_ms)."""
    if host == "localhost":
        host = "127.0.0.1"
    if not _literal(host):
        host = await _dns_a(host, ns or _nameserver(), end)
    return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]


def _nameserver():
    try:
        import network

        return network.WLAN(network.STA_IF).ifconfig()[3]
    except (ImportError, AttributeError, OSError):
        pass
    try:
        with open("/etc/resolv.conf") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 1 and parts[0] == "nameserver" and _literal(parts[1]):
                    return parts[1]
    except OSError:
        pass
    return "8.8.8.8"


async def _dns_a(name, server, end):
    q = bytearray(urandom(2) + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00")
    for label in name.split("."):
        q.append(len(label))
        q.extend(label.encode())
    q.extend(b"\x00\x00\x01\x00\x01")  # QTYPE A, QCLASS IN
    port = 53
    if ":" in server:
        server, port = server.split(":")
        port = int(port)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    dest = socket.getaddrinfo(server, port)[0][-1]
    try:
        retry = ticks_ms()
        while ticks_diff(end, ticks_ms()) > 0:
            if ticks_diff(ticks_ms(), retry) >= 0:
                s.sendto(q, dest)
                retry = ticks_add(ticks_ms(), 1000)
            try:
                r = s.recv(512)
            except OSError:
                await asyncio.sleep_ms(20)
                continue
            if r[:2] == q[:2] and r[2] & 0x80:
                return _dns_answer(r, len(q), name)
        raise OSError("DNS: no answer for %s from %s" % (name, server))
    finally:
        s.close()


def _dns_answer(r, p, name):
    """The first A record's address in response r (p: the question's length, echoed in r).
    A function of its own: the code a reconnect loads is in blocks of a few hundred bytes."""
    if r[3] & 0x0F:
        raise OSError("DNS: %s not found (rcode %d)" % (name, r[3] & 0x0F))
    for _ in range((r[6] << 8) | r[7]):
        while r[p] and r[p] < 0xC0:  # the answer's name: labels, then 0 or a pointer
            p += r[p] + 1
        p += 2 if r[p] >= 0xC0 else 1
        rtype = (r[p] << 8) | r[p + 1]
        rdlen = (r[p + 8] << 8) | r[p + 9]
        p += 10
        if rtype == 1 and rdlen == 4:
            return "%d.%d.%d.%d" % (r[p], r[p + 1], r[p + 2], r[p + 3])
        p += rdlen
    raise OSError("DNS: no address for %s" % name)


async def _line(ws):
    """Read one response line (up to LF) into the WebSocket's chunk buffer, a byte at a time
    (nothing past the handshake is read); -> the line, cut to the buffer, or b"" at EOF. A line
    longer than MAX_HEADER_LINE is an error."""
    buf = ws._tx
    n = 0
    try:
        while True:
            await ws._read_exact(ws._hmv[:1])
            c = ws._hdr[0]
            if n < len(buf):
                buf[n] = c
            n += 1
            if c == 10:
                return bytes(buf[: min(n, len(buf))])
            if n > MAX_HEADER_LINE:
                raise HandshakeError("response header line too long")
    except EOFError:
        return b""


async def _handshake(ws, host, port, secure, path, key, token, headers):
    # Section 4.1: the client's opening handshake.
    default_port = 443 if secure else 80
    hosthdr = host if port == default_port else "%s:%d" % (host, port)
    req = [
        "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n" % (path, hosthdr, key.decode())
    ]
    if token:
        req.append("Authorization: Bearer %s\r\n" % token)
    if headers:
        for k in headers:
            req.append("%s: %s\r\n" % (k, headers[k]))
    req.append("\r\n")
    await ws._write(memoryview("".join(req)))
    req = None
    await _response(ws, key)


async def _response(ws, key):
    # Section 4.1: the server's answer, checked (its own function: see _dns_answer).
    line = await _line(ws)
    if not line:
        raise HandshakeError("connection closed during the handshake")
    parts = line.split(None, 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        raise HandshakeError("not an HTTP response: %r" % line[:64])
    upgrade = connection = accept = None
    for _ in range(MAX_HEADER_LINES):
        line = await _line(ws)
        if not line or line in (b"\r\n", b"\n"):
            break
        i = line.find(b":")
        if i < 0:
            continue
        name = line[:i].strip().lower()
        value = line[i + 1 :].strip()
        if name == b"upgrade":
            upgrade = value.lower()
        elif name == b"connection":
            connection = value.lower()
        elif name == b"sec-websocket-accept":
            accept = value
    else:
        raise HandshakeError("too many response headers", status)
    if status != 101:
        raise HandshakeError("server answered HTTP %d" % status, status)
    # Section 4.1, items 2-4 of the client's checks of the response.
    if upgrade != b"websocket":
        raise HandshakeError("missing Upgrade: websocket", status)
    if connection is None or b"upgrade" not in connection:
        raise HandshakeError("missing Connection: Upgrade", status)
    if accept != accept_key(key):
        raise HandshakeError("wrong Sec-WebSocket-Accept", status)

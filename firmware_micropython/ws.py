# iotgw firmware: a small WebSocket client (RFC 6455, client side) on a non-blocking socket.
#
#   ws = await ws.connect("ws://host:8765/v1/device", token="...")
#   await ws.send('{"type":"hello"}')      # str -> text frame, bytes -> binary
#   msg = await ws.recv()                 # str or bytes; pings answered inside
#   await ws.close(1000)
#
# Exceptions (both OSError, so that one `except OSError` in the caller covers
# sockets, TLS and the WebSocket layer):
#
#   HandshakeError     the opening handshake failed (.status: HTTP status, 0 if none)
#   ConnectionClosed   the session is over (.code, .reason; .local: we closed it)
#
# Memory: frame headers and outgoing chunks use buffers allocated once per
# connection; a payload is masked _TX_CHUNK bytes at a time; an incoming message
# is refused (close 1009) before it is read if it would exceed max_size. The
# opening handshake (URL, DNS, TLS context, HTTP upgrade) lives in wsopen.py,
# which connect() imports for the handshake and unloads afterwards: on a board
# its code would otherwise hold heap for the whole uptime. The socket is read and
# written here, waiting on asyncio's I/O queue: no asyncio.stream (1.7 KB of heap
# for good), and asyncio.funcs only while a timeout runs (wait_for_ms below).
import asyncio
import struct
import sys
from asyncio import core

from compat import fault, ticks_ms, urandom
from micropython import const

# Opcodes, section 5.2 (const: no global, no heap).
_OP_CONT = const(0x0)
_OP_TEXT = const(0x1)
_OP_BINARY = const(0x2)
_OP_CLOSE = const(0x8)
_OP_PING = const(0x9)
_OP_PONG = const(0xA)

# Close codes used here, section 7.4.1.
_CLOSE_NORMAL = const(1000)
_CLOSE_PROTOCOL_ERROR = const(1002)
_CLOSE_NO_STATUS = const(1005)  # never sent: "the close frame had no code"
_CLOSE_ABNORMAL = const(1006)  # never sent: "the connection dropped without a close frame"
_CLOSE_INVALID_DATA = const(1007)
_CLOSE_TOO_BIG = const(1009)

_TX_CHUNK = const(256)  # payload bytes masked per write; a multiple of 4


class HandshakeError(OSError):
    """The server did not accept the WebSocket upgrade (status: its HTTP status, 0 if none)."""

    def __init__(self, msg, status=0):
        super().__init__(msg)
        self.status = status


class ConnectionClosed(OSError):
    """The WebSocket is closed; code is the code the peer sent (1005: none, 1006: dropped).

    local is true when this end started the close (sent its close frame first).
    """

    def __init__(self, code, reason="", local=False):
        super().__init__("websocket closed: %d %s" % (code, reason))
        self.code = code
        self.reason = reason
        self.local = local


def buffers():
    """A WebSocket's buffers (header, masked chunk, mask pattern: 534 bytes): a client that
    reconnects allocates them once and passes them to each connect()."""
    return bytearray(8), bytearray(14 + _TX_CHUNK), bytearray(_TX_CHUNK)


async def connect(url, token=None, headers=None, ssl=None, max_size=65536, timeout_ms=10000, addr=None,
                  bufs=None):
    """Open a WebSocket; returns a WebSocket after a verified opening handshake.

    token adds `Authorization: Bearer <token>`. For wss:// URLs, ssl is an
    SSLContext (ssl_context() makes one); None refuses to connect unverified
    unless ssl is False (explicitly unverified). Raises HandshakeError, or
    OSError for network failures; the whole handshake (DNS, TCP, TLS and HTTP)
    must finish within timeout_ms.
    """
    # The WebSocket (its attributes' table is the one larger block a session keeps) is made
    # before wsopen.py's code is loaded: not in a gap of that code, which would split the
    # free heap left when it is unloaded (reconnects fail from fragmentation, not size).
    ws = WebSocket(None, max_size, bufs)
    import wsopen

    try:
        await wsopen.connect(ws, url, token, headers, ssl, timeout_ms, addr)
    finally:
        unload("wsopen")
    return ws


def ssl_context(ca_file=None):
    """A client TLS context verifying the server against ca_file (see wsopen.ssl_context)."""
    import wsopen

    try:
        return wsopen.ssl_context(ca_file)
    finally:
        unload("wsopen")


def unload(name):
    """Forget module `name` so that the gc can free its code (it is imported again when needed)."""
    try:
        del sys.modules[name]
    except KeyError:
        pass


async def wait_for_ms(aw, ms):
    """asyncio.wait_for_ms, with asyncio.funcs loaded for this call only: resident it would
    hold ~1 KB of heap for the few waits with a timeout (handshakes, the welcome, a close)."""
    import asyncio.funcs

    f = asyncio.funcs.wait_for_ms
    unload("asyncio.funcs")
    del asyncio.funcs  # the package keeps its submodules as attributes
    return await f(aw, ms)


async def _closing(name, *args):
    """Run wsclose.<name>(*args): the closing handshake and failing a connection are
    rare, their code is loaded for them (wsclose.py) and unloaded."""
    import wsclose

    try:
        f = getattr(wsclose, name)
    finally:
        unload("wsclose")
    await f(*args)


def close_quietly(sock):
    if sock is not None:
        try:
            sock.close()
        except Exception:  # already closed, or a TLS socket that fails its close_notify
            pass


class WebSocket:
    """An open client WebSocket. One task may recv() while others send().

    close_code / close_reason hold what the peer's close frame said once the
    session is over (1006 if the connection dropped without one).
    """

    def __init__(self, sock, max_size, bufs=None):
        self._s = sock  # non-blocking (TLS-wrapped for wss://)
        self.max_size = max_size
        # header, masked chunk, the mask key repeated: buffers() allocated once by the caller
        # and reused by each connection in turn, or new ones for this connection
        self._hdr, self._tx, self._pat = bufs or buffers()
        self._hmv = memoryview(self._hdr)
        self._txmv = memoryview(self._tx)
        # One frame at a time on the wire (the reader task answers pings and commands while the
        # sender streams): a flag, not asyncio.Lock, which would load asyncio.lock (~0.6 KB of heap
        # on the 64-bit port, for good) for this one use.
        self._sending = False
        self._reading = False
        self.close_sent = False
        self.close_code = None
        self.close_reason = ""
        self.closed = False
        self.last_rx = ticks_ms()
        self.last_pong = None

    # -- receiving ------------------------------------------------------------

    async def recv(self):
        """Return the next message: str for text, bytes for binary.

        Pings are answered and pongs noted on the way. Raises ConnectionClosed
        when the session ends (peer's close, our close, failure or EOF).
        """
        if self.closed:
            raise ConnectionClosed(self.close_code or _CLOSE_ABNORMAL, self.close_reason)
        self._reading = True
        try:
            return await self._recv()
        except (OSError, EOFError) as exc:
            if isinstance(exc, ConnectionClosed):
                raise
            # Section 7.1.5: no close frame received -> 1006.
            if self.close_code is None:
                self.close_code = _CLOSE_ABNORMAL
            await self._shutdown()
            raise ConnectionClosed(self.close_code, str(exc))
        finally:
            self._reading = False

    async def _recv(self):
        parts = None
        total = 0
        mop = None
        while True:
            fin, op, n = await self._read_header()
            if op >= 0x8:  # control frame, section 5.5
                if not fin or n > 125:
                    await self._fail(_CLOSE_PROTOCOL_ERROR, "bad control frame")
                payload = await self._read_payload(n)
                if op == _OP_PING:
                    if not self.close_sent:
                        await self._send_frame(_OP_PONG, payload)  # section 5.5.3
                elif op == _OP_PONG:
                    self.last_pong = ticks_ms()
                elif op == _OP_CLOSE:
                    await self._on_close(payload)
                else:
                    await self._fail(_CLOSE_PROTOCOL_ERROR, "unknown control opcode")
                continue
            if op == _OP_CONT:
                if mop is None:
                    await self._fail(_CLOSE_PROTOCOL_ERROR, "continuation without a message")
            elif op == _OP_TEXT or op == _OP_BINARY:
                if mop is not None:
                    await self._fail(_CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
                mop = op
            else:
                await self._fail(_CLOSE_PROTOCOL_ERROR, "unknown opcode")
            if total + n > self.max_size:
                # Refuse before reading: nothing of it is ever in RAM (section 7.4.1, 1009).
                await self._fail(_CLOSE_TOO_BIG, "message over %d bytes" % self.max_size)
            data = await self._read_payload(n)
            total += n
            if not fin:
                if parts is None:
                    parts = []
                parts.append(data)
                continue
            if parts is not None:  # section 5.4: reassemble the fragments
                parts.append(data)
                data = b"".join(parts)
                parts = None
            if self.close_sent:
                # Closing: data after our close frame is discarded (section 1.4).
                mop = None
                total = 0
                continue
            if mop == _OP_TEXT:
                try:
                    return str(data, "utf-8")
                except UnicodeError:
                    await self._fail(_CLOSE_INVALID_DATA, "text message is not UTF-8")
            return bytes(data)

    async def _read_exact(self, mv):
        n = 0
        end = len(mv)
        s = self._s
        while n < end:
            r = s.readinto(mv[n:])
            if r is None:  # nothing to read yet (TLS: no complete record): wait for the socket
                yield core._io_queue.queue_read(s)
                continue
            if r == 0:
                raise EOFError("connection closed by the peer")
            n += r
        self.last_rx = ticks_ms()

    async def _write(self, mv):
        s = self._s
        while len(mv):
            r = s.write(mv)
            if r is None:  # the socket's buffer is full: wait until it takes more
                yield core._io_queue.queue_write(s)
            else:
                mv = mv[r:]

    async def _read_header(self):
        # Section 5.2: FIN, RSV1-3, opcode; MASK, payload length (7, 7+16 or 7+64 bits).
        h = self._hmv
        await self._read_exact(h[:2])
        b0 = self._hdr[0]
        b1 = self._hdr[1]
        if b0 & 0x70:
            await self._fail(_CLOSE_PROTOCOL_ERROR, "reserved bits set")  # no extension negotiated
        if b1 & 0x80:
            await self._fail(_CLOSE_PROTOCOL_ERROR, "server frames must not be masked")
        n = b1 & 0x7F
        if n == 126:
            await self._read_exact(h[:2])
            n = struct.unpack_from("!H", self._hdr)[0]
        elif n == 127:
            await self._read_exact(h[:8])
            n = struct.unpack_from("!Q", self._hdr)[0]
        return b0 & 0x80, b0 & 0x0F, n

    async def _read_payload(self, n):
        buf = bytearray(n)
        if n:
            await self._read_exact(memoryview(buf))
        return buf

    async def _on_close(self, payload):
        await _closing("on_close", self, payload)

    async def _fail(self, code, reason):
        await _closing("fail", self, code, reason)

    # -- sending --------------------------------------------------------------

    async def send(self, data):
        """Send str as one text frame, bytes/bytearray/memoryview as one binary frame."""
        if isinstance(data, str):
            await self._send_frame(_OP_TEXT, data)
        else:
            await self._send_frame(_OP_BINARY, data)

    async def send_text(self, data):
        """Send data (str, or UTF-8 bytes / bytearray / memoryview) as one text frame."""
        await self._send_frame(_OP_TEXT, data)

    async def ping(self, data=b""):
        await self._send_frame(_OP_PING, data)

    async def _send_close(self, code, reason):
        if code is None:
            payload = b""
        else:
            payload = struct.pack("!H", code) + reason.encode()[:123]
        await self._send_frame(_OP_CLOSE, payload)
        self.close_sent = True

    async def _send_frame(self, op, payload):
        # Section 5.2/5.3: client frames are masked with a fresh random key.
        while self._sending:  # another task's frame is still going out (a Lock, see __init__)
            await asyncio.sleep_ms(1)
        self._sending = True
        try:
            if self.closed or self.close_sent:
                raise ConnectionClosed(self.close_code or _CLOSE_ABNORMAL, "closed", True)
            src = memoryview(payload)  # str too: its UTF-8 bytes, no copy
            n = len(src)
            tx = self._tx
            tx[0] = 0x80 | op
            if n < 126:
                tx[1] = 0x80 | n
                h = 2
            elif n < 65536:
                tx[1] = 0x80 | 126
                struct.pack_into("!H", tx, 2, n)
                h = 4
            else:
                tx[1] = 0x80 | 127
                struct.pack_into("!Q", tx, 2, n)
                h = 10
            key = urandom(4)
            tx[h : h + 4] = key
            h += 4
            pat = self._pat
            pat[0:4] = key
            k = 4
            while k < _TX_CHUNK:  # repeat the key by doubling: C-speed copies
                c = min(k, _TX_CHUNK - k)
                pat[k : k + c] = pat[0:c]
                k += c
            off = 0
            pos = h
            while True:
                m = min(n - off, _TX_CHUNK)
                fault("send")
                if m:
                    # XOR m bytes at once as big integers; pat starts on a key
                    # boundary because every chunk but the last is _TX_CHUNK long.
                    x = int.from_bytes(src[off : off + m], "big") ^ int.from_bytes(pat[:m], "big")
                    tx[pos : pos + m] = x.to_bytes(m, "big")
                await self._write(self._txmv[: pos + m])
                off += m
                pos = 0
                if off >= n:
                    break
        finally:
            self._sending = False

    # -- closing --------------------------------------------------------------

    async def close(self, code=_CLOSE_NORMAL, reason="", timeout_ms=2000):
        """Start the closing handshake and wait (up to timeout_ms) for the peer's close."""
        await _closing("close", self, code, reason, timeout_ms)

    def abort(self):
        """Drop the connection now, without a closing handshake."""
        if not self.closed:
            self.closed = True
            if self.close_code is None:
                self.close_code = _CLOSE_ABNORMAL
            close_quietly(self._s)

    async def _shutdown(self):
        if not self.closed:
            self.closed = True
            if self.close_code is None:
                self.close_code = _CLOSE_ABNORMAL
            close_quietly(self._s)

# iotgw firmware: device protocol v1 session over ws.py (docs/protocol.md).
#
# The Link owns the device's data path: samples go into the outbox (outbox.py:
# a ring sized in bytes, stamped with ticks_ms), are batched into `readings`
# frames when connected, sent pipelined (up to `window` frames in flight), and
# dropped only when the gateway's cumulative `ack` covers them. After a
# reconnect the unacked frames are resent in order, minus those
# welcome.last_seq says are stored.
#
# No silent loss: a MemoryError anywhere on the way (encoding a sample,
# building a frame, sending it) either leaves the samples in the ring or counts
# them in `dropped`; it ends at most the session, never the app.
#
# Link.run() is the supervisor loop: it keeps a session up, with exponential
# backoff and full jitter between attempts, so the sampling code only ever
# calls add_sample() / add_event() and never sees a network failure.
import asyncio

import compat
import proto
import ws as wsmod
from compat import AGENT, collect, fault, hexid, log, print_exception, rand_below, ticks_add, ticks_diff, ticks_ms
from outbox import Clock, Outbox
from ring import EVENT

DEFAULT_BUFFER_BYTES = 8192


class Link:
    """Protocol v1 client for one device.

    cfg: the firmware config (see README.md); sensors: (metric, unit, kind)
    tuples for hello; commands: {name: async handler(args) -> value} (their
    descriptions are in hello.py); info: a function returning the
    {key: value} health map for hello and status. Set `outputs` (names) for
    the descriptions of set/toggle.
    """

    def __init__(self, cfg, sensors=(), commands=None, info=None, net=None):
        self.url = cfg["url"]
        self.token = cfg.get("token")
        self.device = cfg.get("device")
        self.ca_file = cfg.get("ca_file")
        self.insecure = cfg.get("tls_insecure", False)
        self.ntp = cfg.get("ntp", "pool.ntp.org" if compat.BOARD else None)
        # The gateway's resolved address, cached between sessions, and the DNS server.
        self._addr = [None, cfg.get("dns")]
        self.window = cfg.get("window", 4)
        self.batch = min(cfg.get("batch_samples", 50), proto.MAX_SAMPLES)
        self.max_frame = min(cfg.get("max_frame_bytes", 2048), proto.MAX_FRAME_BYTES)
        self.max_message = cfg.get("max_message_bytes", 8192)
        self.status_ms = int(cfg.get("status_interval_s", 60) * 1000)
        self.silence_ms = int(cfg.get("silence_timeout_s", 60) * 1000)
        self.trace = cfg.get("trace", False)
        b = cfg.get("backoff", {})
        self.base_ms = int(b.get("base_s", 1) * 1000)
        self.cap_ms = int(b.get("cap_s", 60) * 1000)
        self.long_ms = int(b.get("long_s", 300) * 1000)
        self.replaced_ms = int(b.get("replaced_s", 60) * 1000)
        self.sensors = sensors
        self.commands = commands or {}
        self.outputs = ()
        self.info = info or (lambda: {})
        self.net = net  # object with async up() and isconnected(), or None (unix port)
        self.on_settings = None  # called with welcome.settings
        self.on_connected = None  # called at each welcome
        # A board loses its RAM buffer on reboot: new stream, new seq space.
        self.stream = "fw-" + hexid(8)
        # What a reset would lose (the ring's unacked samples), kept where it survives one
        # (compat.save_state): the next boot counts it in `dropped` and reports it.
        self._state = bytearray(24)
        self.lost_at_boot = compat.lost_at_boot(self._state)
        if self.lost_at_boot:
            log(0, "BOOT lost %d unacked samples in the reset" % self.lost_at_boot)
        self.clock = Clock()
        self.out = Outbox(cfg.get("buffer_bytes", DEFAULT_BUFFER_BYTES), self.window,
                          self.max_frame, self.batch, self.clock)
        self.acked = 0
        self.sent_seq = 0  # highest seq sent in the current session
        self.skipped = 0  # values skipped as invalid (bad name, NaN, ...)
        self.sessions = 0
        self.connected = False
        self.last_close = None
        self._wake = asyncio.Event()
        self._rx_exc = None
        self._ws = None
        self._stopping = False
        self._recent = []  # (command id, result text), last 8: a redelivered command is not run twice

    # -- what the application calls ---------------------------------------------

    def add_sample(self, values, t=None):
        """Queue one sample ({metric: value}); returns False if it was not queued.

        Never raises MemoryError: a sample that cannot be encoded or stored is
        counted in `dropped` (one with no valid value at all is only `skipped`).
        """
        t = ticks_ms() if t is None else t
        try:
            fault("encode")
            vj, skipped = proto.values_json(values)
            self.skipped += skipped
            if vj is None:
                return False
            ok = self.out.put(0, t, vj)
        except MemoryError:
            self.out.lost += 1
            return False
        self._wake.set()
        self._save()
        return ok

    def add_event(self, name, data=None, t=None):
        """Queue one event (its own frame, same seq space as readings); like add_sample."""
        if not proto.name_ok(name):
            return False
        t = ticks_ms() if t is None else t
        try:
            fault("encode")
            dj, skipped = proto.values_json(data or {}, allow_empty=True)
            self.skipped += skipped
            ok = self.out.put(EVENT, t, '"%s","data":%s' % (name, dj))
        except MemoryError:
            self.out.lost += 1
            return False
        self._wake.set()
        self._save()
        return ok

    def lose(self, n=1):
        """Count n samples the application took but could not hand over (MemoryError)."""
        self.out.lost += n

    def _save(self):
        compat.save_state(self._state, self.out.ring.count)

    @property
    def buffered(self):
        return self.out.buffered()

    @property
    def dropped(self):
        return self.out.dropped + self.lost_at_boot

    @property
    def next_seq(self):
        return self.out.next_seq

    def idle(self):
        """True when every queued sample has been acknowledged."""
        return self.out.idle()

    def hello_text(self):
        import hello

        try:
            return hello.hello(
                self.stream, AGENT, self.acked, self.sensors,
                hello.describe(self.commands, self.outputs),
                self.buffered, self.dropped, self.info(), self.device,
            )
        finally:
            wsmod.unload("hello")

    def status_text(self):
        return proto.status(self.buffered, self.dropped, self.info())

    # -- supervisor -----------------------------------------------------------------

    async def run(self):
        """Keep a session up forever (until stop()): the supervisor task."""
        attempt = 0
        while not self._stopping:
            if self.net is not None:
                await self.net.up()
            delay = None
            self.connected = False
            try:
                await self.session()
            except wsmod.ConnectionClosed as exc:
                self.last_close = exc.code
                if not exc.local:
                    delay = self.close_delay(exc.code, exc.reason)
                else:
                    log(1, "LINK closed by us:", exc.code, exc.reason)
            except wsmod.HandshakeError as exc:
                log(0, "LINK handshake failed:", exc.args[0])
                if exc.status in (401, 403, 404):
                    # Token or URL wrong: nothing changes until the config does.
                    delay = self.long_ms
            except (OSError, EOFError, asyncio.TimeoutError) as exc:
                log(1, "LINK down:", repr(exc))
            except MemoryError:
                # Sending may have stopped mid-frame: the session is over, the frames are
                # still pinned in the ring and go again on the next one.
                log(0, "LINK MemoryError: session ended; unacked frames will be resent")
            except Exception as exc:  # a bug: keep the device alive, say so loudly
                log(0, "LINK error:")
                print_exception(exc)
            if self._stopping:
                break
            if self.connected:
                attempt = 0  # the session worked: start the backoff over
            self.connected = False
            self._ws = None
            collect()
            if delay is None:
                # Exponential backoff with full jitter (base 1 s, cap 60 s).
                delay = rand_below(min(self.cap_ms, self.base_ms << min(attempt, 16)) + 1)
                attempt += 1
            log(1, "RECONNECT in %d ms" % delay)
            await self._sleep_unless_stopped(delay)

    def close_delay(self, code, reason):
        """Delay (ms) before reconnecting after the gateway closed with code, or None for backoff."""
        if code == proto.REPLACED:
            log(0, "LINK !!! closed 4000: another connection uses this device's token;"
                   " two devices may share a token !!!")
            return self.replaced_ms + rand_below(self.base_ms + 1)
        if code in proto.CONFIG_CLOSES:
            log(0, "LINK closed %d (%s): fix the configuration; retrying in %d s"
                % (code, reason, self.long_ms // 1000))
            return self.long_ms
        if code == proto.POLICY_VIOLATION:
            log(0, "LINK closed 1008: too many refused frames (%s)" % reason)
            return self.replaced_ms
        log(1, "LINK closed %d %s" % (code, reason))
        return None

    async def _sleep_unless_stopped(self, ms):
        end = ticks_add(ticks_ms(), ms)
        while not self._stopping:
            left = ticks_diff(end, ticks_ms())
            if left <= 0:
                return
            await asyncio.sleep_ms(min(left, 500))

    async def stop(self):
        """Close the session (1000) and end run()."""
        self._stopping = True
        self._wake.set()
        ws = self._ws
        if ws is not None:
            try:
                await ws.close(proto.NORMAL)
            except Exception:  # out of memory or a dead socket: drop it, nothing is pending
                ws.abort()

    # -- one session ------------------------------------------------------------------

    async def _tls(self):
        """The TLS context for wss://: verified against ca_file once the clock is set."""
        if self.insecure:
            log(0, "LINK warning: tls_insecure, the gateway is not verified")
            return False
        if not self.ca_file:
            raise wsmod.HandshakeError("wss:// without ca_file: set ca_file (or tls_insecure)", 0)
        import timesync

        try:
            ok = await timesync.ensure(self.url, self.ntp, self._addr)
        finally:
            wsmod.unload("timesync")
        if not ok:
            raise OSError("clock not set: TLS cannot check the certificate yet")
        return wsmod.ssl_context(self.ca_file)

    async def session(self):
        ctx = None
        if self.url.startswith("wss://"):
            ctx = await self._tls()
        log(1, "LINK connecting to", self.url)
        # hello first, while the heap is in one piece: hello.py and wsopen.py are never
        # loaded at the same time, and the handshake's leftovers cannot split its block.
        collect()
        hello = self.hello_text()
        collect()
        try:
            ws = await wsmod.connect(self.url, token=self.token, ssl=ctx, max_size=self.max_message,
                                     addr=self._addr)
        except OSError:
            self._addr[0] = None  # resolve again next time (the gateway may have moved)
            raise
        self._ws = ws
        self.sessions += 1
        reader = None
        try:
            t0 = ticks_ms()
            await ws.send(hello)
            hello = None
            welcome = await asyncio.wait_for_ms(self._await_welcome(ws), 10000)
            self._on_welcome(welcome, t0, ticks_ms())
            welcome = None  # not held for the whole session
            self._rx_exc = None
            reader = asyncio.create_task(self._reader(ws))
            await self._sender(ws)
        finally:
            self.connected = False
            if reader is not None:
                reader.cancel()
            if not ws.closed:
                if self._stopping:
                    await ws.close(proto.NORMAL)
                else:
                    ws.abort()

    async def _await_welcome(self, ws):
        while True:
            msg = self._decode(await ws.recv())
            if msg is None:
                continue
            if msg["type"] == "welcome":
                return msg
            if msg["type"] == "error":
                self._on_error(msg)
            else:
                log(1, "LINK ignoring %s before welcome" % msg["type"])

    def _on_welcome(self, msg, t0, t1):
        self.clock.sync(int(msg["server_time"]), t0, t1)
        last = int(msg.get("last_seq", 0))
        # Frames the gateway has stored are done; the rest are resent in order.
        self.out.acked(last)
        self._save()
        if last > self.acked:
            self.acked = last
        if self.out.next_seq <= last:
            self.out.next_seq = last + 1
        self.sent_seq = 0
        limits = msg.get("limits") or {}
        if "max_frame_bytes" in limits:
            self.out.max_frame = min(self.out.max_frame, int(limits["max_frame_bytes"]))
        if "max_samples" in limits:
            self.out.batch = max(1, min(self.out.batch, int(limits["max_samples"])))
        self.connected = True
        log(1, "LINK welcome device=%s last_seq=%d rtt=%d ms resend=%d"
            % (msg.get("device"), last, self.clock.rtt, self.out.n))
        settings = msg.get("settings")
        if settings and self.on_settings is not None:
            self.on_settings(settings)
        if self.on_connected is not None:
            self.on_connected()

    def _decode(self, text):
        if not isinstance(text, str):
            log(1, "LINK ignoring a binary frame")
            return None
        try:
            return proto.decode(text)
        except ValueError:
            log(0, "LINK gateway sent a frame that is not JSON:", text[:80])
            return None

    async def _reader(self, ws):
        try:
            while True:
                msg = self._decode(await ws.recv())
                if msg is None:
                    continue
                kind = msg["type"]
                if kind == "ack":
                    self._on_ack(int(msg["seq"]))
                elif kind == "command":
                    await self._on_command(ws, msg)
                elif kind == "error":
                    self._on_error(msg)
                else:
                    log(1, "LINK ignoring", kind)
        except Exception as exc:  # includes ConnectionClosed: hand it to the sender
            self._rx_exc = exc
            self._wake.set()

    def _on_ack(self, seq):
        # Cumulative (docs/protocol.md step 4): everything <= seq is stored.
        if seq >= self.out.next_seq:
            log(0, "LINK ack %d for a frame never sent (next %d)" % (seq, self.out.next_seq))
            seq = self.out.next_seq - 1
        if seq > self.acked:
            self.acked = seq
        self.out.acked(seq)
        self._save()
        self._wake.set()

    def _on_error(self, msg):
        code = msg.get("code")
        seq = msg.get("seq")
        log(0, "LINK gateway error %s seq=%s: %s" % (code, seq, msg.get("detail")))
        if seq is None or code == "seq_not_increasing":
            # Not stored again, but a well-behaved stream gets it covered by an ack.
            return
        # The frame was refused and nothing of it stored: resending cannot help.
        if self.out.refused(seq):
            self._save()
            self._wake.set()

    async def _on_command(self, ws, msg):
        import command  # loaded per command (command.py)

        try:
            text = await command.run(self, msg)
        finally:
            wsmod.unload("command")
        await ws.send(text)

    async def _sender(self, ws):
        status_due = ticks_add(ticks_ms(), self.status_ms)  # hello carried the same info
        out = self.out
        while True:
            if self._rx_exc is not None:
                raise self._rx_exc
            if self._stopping:
                return
            text = None
            try:
                i = out.first_unsent(self.sent_seq)
                if i >= 0:
                    seq = out.seqs[i]
                    text = out.rebuild(i)
                elif out.can_build():
                    seq, text = out.build_next()
                    if self.trace:
                        log(0, "FRAME %d %d" % (seq, out.nrecs[out.n - 1]))
            except MemoryError:
                # Nothing was sent and nothing pinned or spent: the samples wait in the ring.
                log(0, "LINK MemoryError building a frame; retrying")
                collect()
                await asyncio.sleep_ms(100)
                continue
            if text is not None:
                # A MemoryError inside send() may leave half a frame on the wire: it ends the
                # session (the supervisor reconnects) and the frame is sent again.
                await ws.send_text(text)
                self.sent_seq = seq
                continue
            now = ticks_ms()
            if ticks_diff(now, status_due) >= 0:
                status_due = ticks_add(now, self.status_ms)
                self.clock.refresh()
                collect()
                try:
                    st = self.status_text()
                except MemoryError:
                    st = None  # the next one will tell
                if st is not None:
                    await ws.send(st)
                continue
            if ticks_diff(now, ws.last_rx) > self.silence_ms:
                # The gateway pings every 20 s: this much silence is a dead link.
                raise OSError("no frame from the gateway for %d s" % (self.silence_ms // 1000))
            if self.net is not None and not self.net.isconnected():
                raise OSError("network down")
            self._wake.clear()
            try:
                await asyncio.wait_for_ms(self._wake.wait(), 1000)
            except asyncio.TimeoutError:
                pass

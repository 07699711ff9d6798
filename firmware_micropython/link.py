# iotgw firmware: device protocol v1 session over ws.py (docs/protocol.md).
#
# The Link owns the device's data path: samples go into a RAM ring (stamped
# with ticks_ms), are batched into `readings` frames when connected, sent
# pipelined (up to `window` frames in flight), and dropped only when the
# gateway's cumulative `ack` covers them. After a reconnect the unacked frames
# are resent in order, minus those welcome.last_seq says are stored.
#
# Link.run() is the supervisor loop: it keeps a session up, with exponential
# backoff and full jitter between attempts, so the sampling code only ever
# calls add_sample() / add_event() and never sees a network failure.
import asyncio

import proto
import ws as wsmod
from compat import AGENT, collect, hexid, log, print_exception, rand_below, ticks_add, ticks_diff, ticks_ms
from ring import Ring

ANCHOR_MAX_AGE_MS = 3600000  # re-anchor the clock hourly: ticks_diff is only valid over half a tick period


class Clock:
    """Gateway time (ms since the Unix epoch) from ticks_ms.

    sync() anchors a tick count to welcome.server_time; ms(t) converts any
    tick stamp t with ticks_diff, so tick wrap-around is harmless.
    """

    def __init__(self):
        self.synced = False
        self._t = 0
        self._ms = 0
        self.rtt = 0

    def sync(self, server_ms, t_sent, t_rcvd):
        # server_time was read somewhere between hello and welcome: assume the
        # middle of the round trip (docs/protocol.md, "Values and time").
        self.rtt = ticks_diff(t_rcvd, t_sent)
        self._t = ticks_add(t_sent, self.rtt // 2)
        self._ms = server_ms
        self.synced = True

    def ms(self, t):
        return self._ms + ticks_diff(t, self._t)

    def now(self):
        return self.ms(ticks_ms())

    def refresh(self):
        """Move the anchor to now (same time base), keeping tick differences small."""
        if self.synced and ticks_diff(ticks_ms(), self._t) > ANCHOR_MAX_AGE_MS:
            t = ticks_ms()
            self._ms += ticks_diff(t, self._t)
            self._t = t


class Link:
    """Protocol v1 client for one device.

    cfg: the firmware config (see README.md); sensors: (metric, unit, kind)
    tuples for hello; commands: {name: (async handler(args) -> value,
    description, {arg: description})}; info: a function returning the
    {key: value} health map for hello and status.
    """

    def __init__(self, cfg, sensors=(), commands=None, info=None, net=None):
        self.url = cfg["url"]
        self.token = cfg.get("token")
        self.device = cfg.get("device")
        self.ca_file = cfg.get("ca_file")
        self.window = cfg.get("window", 8)
        self.batch = min(cfg.get("batch_samples", 50), proto.MAX_SAMPLES)
        self.max_frame = min(cfg.get("max_frame_bytes", 16384), proto.MAX_FRAME_BYTES)
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
        self.info = info or (lambda: {})
        self.net = net  # object with async up() and isconnected(), or None (unix port)
        self.on_settings = None  # called with welcome.settings
        # A board loses its RAM buffer on reboot: new stream, new seq space.
        self.stream = "fw-" + hexid(8)
        self.samples = Ring(cfg.get("buffer_samples", 256))  # (ticks, values_text, event_name|None)
        self.frames = Ring(self.window)  # (seq, text, nsamples): built, not yet acked
        self.next_seq = 1
        self.acked = 0
        self.sent_seq = 0  # highest seq sent in the current session
        self.clock = Clock()
        self.refused = 0  # samples in frames the gateway refused (error)
        self.skipped = 0  # values skipped as invalid (bad name, NaN, ...)
        self.sessions = 0
        self.connected = False
        self.last_close = None
        self._wake = asyncio.Event()
        self._rx_exc = None
        self._ws = None
        self._stopping = False
        self._recent = Ring(8)  # (command id, result text): a redelivered command is not run twice

    # -- what the application calls ---------------------------------------------

    def add_sample(self, values, t=None):
        """Queue one sample ({metric: value}); returns False if nothing valid was in it."""
        vj, skipped = proto.values_json(values)
        self.skipped += skipped
        if vj is None:
            return False
        self.samples.put((ticks_ms() if t is None else t, vj, None))
        self._wake.set()
        return True

    def add_event(self, name, data=None, t=None):
        """Queue one event (its own frame, same seq space as readings)."""
        if not proto.name_ok(name):
            return False
        dj, skipped = proto.values_json(data or {}, allow_empty=True)
        self.skipped += skipped
        self.samples.put((ticks_ms() if t is None else t, dj, name))
        self._wake.set()
        return True

    @property
    def buffered(self):
        n = len(self.samples)
        for i in range(len(self.frames)):
            n += self.frames.peek(i)[2]
        return n

    @property
    def dropped(self):
        return self.samples.dropped + self.refused

    def idle(self):
        """True when every queued sample has been acknowledged."""
        return not len(self.samples) and not len(self.frames)

    def hello_text(self):
        cmds = []
        for name in self.commands:
            c = self.commands[name]
            cmds.append((name, c[1], c[2]))
        return proto.hello(
            self.stream, AGENT, self.acked, self.sensors, cmds,
            self.buffered, self.dropped, self.info(), self.device,
        )

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
            await ws.close(proto.NORMAL)

    # -- one session ------------------------------------------------------------------

    async def session(self):
        ctx = None
        if self.url.startswith("wss://"):
            ctx = wsmod.ssl_context(self.ca_file)
            if not self.ca_file:
                log(0, "LINK warning: wss:// without ca_file, the gateway is not verified")
        log(1, "LINK connecting to", self.url)
        ws = await wsmod.connect(self.url, token=self.token, ssl=ctx, max_size=self.max_message)
        self._ws = ws
        self.sessions += 1
        reader = None
        try:
            t0 = ticks_ms()
            await ws.send(self.hello_text())
            welcome = await asyncio.wait_for_ms(self._await_welcome(ws), 10000)
            self._on_welcome(welcome, t0, ticks_ms())
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
        while len(self.frames) and self.frames.peek()[0] <= last:
            self.frames.get()
        if last > self.acked:
            self.acked = last
        if self.next_seq <= last:
            self.next_seq = last + 1
        self.sent_seq = 0
        limits = msg.get("limits") or {}
        if "max_frame_bytes" in limits:
            self.max_frame = min(self.max_frame, int(limits["max_frame_bytes"]))
        if "max_samples" in limits:
            self.batch = max(1, min(self.batch, int(limits["max_samples"])))
        self.connected = True
        log(1, "LINK welcome device=%s last_seq=%d rtt=%d ms resend=%d"
            % (msg.get("device"), last, self.clock.rtt, len(self.frames)))
        settings = msg.get("settings")
        if settings and self.on_settings is not None:
            self.on_settings(settings)

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
        if seq >= self.next_seq:
            log(0, "LINK ack %d for a frame never sent (next %d)" % (seq, self.next_seq))
            seq = self.next_seq - 1
        if seq > self.acked:
            self.acked = seq
        while len(self.frames) and self.frames.peek()[0] <= seq:
            self.frames.get()
        self._wake.set()

    def _on_error(self, msg):
        code = msg.get("code")
        seq = msg.get("seq")
        log(0, "LINK gateway error %s seq=%s: %s" % (code, seq, msg.get("detail")))
        if seq is None or code == "seq_not_increasing":
            # Not stored again, but a well-behaved stream gets it covered by an ack.
            return
        # The frame was refused and nothing of it stored: resending cannot help.
        for i in range(len(self.frames)):
            f = self.frames.peek(i)
            if f[0] == seq:
                self.refused += f[2]
                # Rebuild the ring without it, keeping the order.
                keep = [self.frames.get() for _ in range(len(self.frames))]
                for g in keep:
                    if g[0] != seq:
                        self.frames.put(g)
                self._wake.set()
                return

    async def _on_command(self, ws, msg):
        cid = str(msg.get("id", ""))
        for i in range(len(self._recent)):
            r = self._recent.peek(i)
            if r[0] == cid:  # redelivered after a reconnect: answer, do not run again
                await ws.send(r[1])
                return
        name = msg.get("name")
        deadline = msg.get("deadline") or 0
        cmd = self.commands.get(name)
        log(1, "COMMAND", cid, name, msg.get("args"))
        if cmd is None:
            text = proto.result(cid, False, error="unknown command: %s" % name)
        elif deadline and self.clock.synced and self.clock.now() > deadline:
            text = proto.result(cid, False, error="deadline passed")
        else:
            try:
                value = await cmd[0](msg.get("args") or {})
                text = proto.result(cid, True, value)
            except Exception as exc:
                text = proto.result(cid, False, error="%s: %s" % (type(exc).__name__, exc))
        self._recent.put((cid, text))
        await ws.send(text)

    async def _sender(self, ws):
        status_due = ticks_add(ticks_ms(), self.status_ms)  # hello carried the same info
        while True:
            if self._rx_exc is not None:
                raise self._rx_exc
            if self._stopping:
                return
            frame = self._next_unsent()
            if frame is None and len(self.frames) < self.window and len(self.samples):
                frame = self._build_frame()
                self.frames.put(frame)
            if frame is not None:
                await ws.send(frame[1])
                self.sent_seq = frame[0]
                frame = None
                continue
            now = ticks_ms()
            if ticks_diff(now, status_due) >= 0:
                status_due = ticks_add(now, self.status_ms)
                self.clock.refresh()
                collect()
                await ws.send(self.status_text())
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

    def _next_unsent(self):
        for i in range(len(self.frames)):
            f = self.frames.peek(i)
            if f[0] > self.sent_seq:
                return f
        return None

    def _build_frame(self):
        """Take the oldest samples (or one event) off the ring as one frame."""
        seq = self.next_seq
        self.next_seq += 1
        t, vj, name = self.samples.peek()
        if name is not None:
            self.samples.get()
            text = proto.event(seq, self.clock.ms(t), name, vj)
            if self.trace:
                log(0, "FRAME %d 1" % seq)
            return (seq, text, 1)
        batch = []
        size = proto.READINGS_OVERHEAD
        while len(self.samples) and len(batch) < self.batch:
            t, vj, name = self.samples.peek()
            if name is not None:
                break
            n = proto.sample_size(vj)
            if batch and size + n > self.max_frame:
                break
            self.samples.get()
            batch.append((self.clock.ms(t), vj))
            size += n
        if self.trace:
            log(0, "FRAME %d %d" % (seq, len(batch)))
        return (seq, proto.readings(seq, batch), len(batch))

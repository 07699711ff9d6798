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
#
# What runs only at a session's start or end (the config, hello and welcome, TLS and the
# clock, close codes, gateway errors) lives in linkup.py, loaded for that and unloaded.
import asyncio

import compat
import proto
import ws as wsmod
from compat import collect, fault, log, print_exception, rand_below, ticks_add, ticks_diff, ticks_ms
from micropython import const
from ring import EVENT

_NORMAL = const(1000)


class Link:
    """Protocol v1 client for one device.

    cfg: the firmware config (see README.md); sensors: (metric, unit, kind)
    tuples for hello; commands: the names of the commands declared in hello (their
    descriptions are in hello.py); info: a function returning the {key: value}
    health map for hello and status. Set `outputs` (names) for the descriptions of
    set/toggle, and `on_command(name, args)`: -> a coroutine whose value is the
    command's result (at each welcome with settings: on_command("welcome", settings)).
    """

    def __init__(self, cfg, sensors=(), commands=None, info=None, net=None):
        import linkcfg  # the config, read once

        try:
            linkcfg.setup(self, cfg)
        finally:
            wsmod.unload("linkcfg")
            linkcfg = None
        self.sensors = sensors
        self.commands = commands or ()
        self.outputs = ()
        self.info = info or (lambda: {})
        self.net = net  # object with async up() and isconnected(), or None (unix port)
        self.on_command = None  # see the class docstring

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
        self._wake = True
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
        self._wake = True
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

    def idle(self):
        """True when every queued sample has been acknowledged."""
        return self.out.idle()

    # -- supervisor -----------------------------------------------------------------

    async def run(self):
        """Keep a session up forever (until stop()): the supervisor task."""
        attempt = 0
        while not self._stopping:
            if self.net is not None:
                await self.net.up()
            delay = None
            self.connected = None
            try:
                try:
                    await self.session()
                except wsmod.ConnectionClosed as exc:
                    if exc.local or self._stopping:
                        log(1, "LINK closed by us:", exc.code, exc.reason)
                    else:
                        delay = self._up("close_delay", exc.code, exc.reason)
                except wsmod.HandshakeError as exc:
                    log(0, "LINK handshake failed:", exc.args[0])
                    if exc.status in (401, 403, 404):
                        # Token or URL wrong: nothing changes until the config does.
                        delay = self.long_ms
                except (OSError, EOFError, asyncio.TimeoutError) as exc:
                    log(1, "LINK down:", repr(exc))
                except MemoryError as exc:
                    # Sending may have stopped mid-frame: the session is over, the frames are
                    # still pinned in the ring and go again on the next one.
                    log(0, "LINK MemoryError:", exc, "(session ended; unacked frames will be resent)")
                    if compat.LEVEL[0] > 1:
                        print_exception(exc)
                except Exception as exc:  # a bug: keep the device alive, say so loudly
                    log(0, "LINK error:")
                    print_exception(exc)
            except MemoryError:  # in a handler above (linkup.py, a log line): the backoff's delay
                collect()
            if self._stopping:
                break
            since = self.connected
            if since is not None and ticks_diff(ticks_ms(), since) >= self.stable_ms:
                # The session stayed up: start the backoff over. One that ends sooner (a gateway
                # that accepts and drops at once) still backs off, like a failed attempt.
                attempt = 0
            self.connected = None
            self._ws = None
            collect()
            if delay is None:
                # Exponential backoff with full jitter (base 1 s, cap 60 s).
                delay = rand_below(min(self.cap_ms, self.base_ms << min(attempt, 16)) + 1)
                attempt += 1
            log(1, "RECONNECT in %d ms" % delay)
            end = ticks_add(ticks_ms(), delay)
            while not self._stopping and ticks_diff(end, ticks_ms()) > 0:
                await asyncio.sleep_ms(min(ticks_diff(end, ticks_ms()), 500))

    def _up(self, name, *args):
        """Call linkup.<name>(self, *args): code for a session's start and end, unloaded after."""
        import linkup

        try:
            return getattr(linkup, name)(self, *args)
        finally:
            wsmod.unload("linkup")

    async def stop(self):
        """Close the session (1000) and end run()."""
        self._stopping = True
        self._wake = True
        ws = self._ws
        if ws is not None:
            try:
                await ws.close(_NORMAL)
            except Exception:  # out of memory or a dead socket: drop it, nothing is pending
                ws.abort()

    # -- one session ------------------------------------------------------------------

    async def session(self):
        # linkup.py (clock, TLS context, hello; then the welcome) and wsopen.py (the
        # handshake) are loaded in turn, never together: the peak of a reconnect stays low.
        import linkup

        try:
            ctx, hello = await linkup.prepare(self)
        finally:
            wsmod.unload("linkup")
            linkup = None
        collect()
        try:
            ws = await wsmod.connect(self.url, token=self.token, ssl=ctx, max_size=self.max_message,
                                     addr=self._addr, bufs=self._wsbufs)
        except OSError:
            self._addr[0] = None  # resolve again next time (the gateway may have moved)
            raise
        ctx = None
        self._ws = ws
        self.sessions += 1
        try:
            t0 = ticks_ms()
            await ws.send_text(hello)
            hello = None
            import linkup

            try:
                await linkup.welcome(self, ws, t0)
            finally:
                wsmod.unload("linkup")
                linkup = None
        except BaseException:
            ws.abort()
            raise
        reader = None
        try:
            self._rx_exc = None
            reader = asyncio.create_task(self._reader(ws))
            await self._sender(ws)
        finally:
            # `connected` stays set: run() reads it (how long the session was up), then clears it.
            if reader is not None:
                reader.cancel()
            if not ws.closed:
                if self._stopping:
                    await ws.close(_NORMAL)
                else:
                    ws.abort()

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
                    self._up("on_error", msg)
                else:
                    log(1, "LINK ignoring", kind)
        except Exception as exc:  # includes ConnectionClosed: hand it to the sender
            self._rx_exc = exc
            self._wake = True

    def _on_ack(self, seq):
        # Cumulative (docs/protocol.md step 4): everything <= seq is stored.
        if seq >= self.out.next_seq:
            log(0, "LINK ack %d for a frame never sent (next %d)" % (seq, self.out.next_seq))
            seq = self.out.next_seq - 1
        if seq > self.acked:
            self.acked = seq
        self.out.acked(seq)
        self._save()
        self._wake = True

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
                    st = proto.status(self.buffered, self.dropped, self.info())
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
            # Wait up to 1 s for a wake-up (a sample, an ack, the reader's end): a flag polled
            # every 20 ms, not an asyncio.Event (~1 KB of heap for good on the 64-bit port).
            self._wake = False
            end = ticks_add(now, 1000)
            while not self._wake and ticks_diff(end, ticks_ms()) > 0:
                await asyncio.sleep_ms(20)

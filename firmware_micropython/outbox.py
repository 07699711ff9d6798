# iotgw firmware: what waits to be sent, and the one buffer frames are built in.
#
# Samples and events wait in a Ring (ring.py, sized in bytes). A frame is built
# from the oldest unpinned records straight into one preallocated bytearray
# (no per-frame allocation but a few digits), and its records stay pinned in the
# ring until the gateway's cumulative ack covers its seq. A resend after a
# reconnect rebuilds the frame from the same records: their tick stamps were
# turned into gateway time in place the first time, so the text is byte for byte
# the same (docs/protocol.md, "Sequence numbers and acks").
#
# A MemoryError while a frame is built changes nothing that matters: the seq is
# spent and the records pinned only once the frame is complete.
from compat import fault, ticks_add, ticks_diff, ticks_ms
from micropython import const
from ring import Ring

_EVENT = const(1)  # ring.EVENT, ring.WALL
_WALL = const(2)
_ANCHOR_MAX_AGE_MS = const(3600000)  # re-anchor hourly: ticks_diff is valid over half a tick period
_SAMPLE_OVERHEAD = const(40)  # '{"ts":<13 digits>,"values":' ... '},'
_FRAME_OVERHEAD = const(64)  # '{"type":"readings","seq":<16 digits>,"samples":[' ... ']}'


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
        if self.synced and ticks_diff(ticks_ms(), self._t) > _ANCHOR_MAX_AGE_MS:
            t = ticks_ms()
            self._ms += ticks_diff(t, self._t)
            self._t = t


class Outbox:
    """The ring, the frames in flight (at most `window`) and the frame buffer.

    The link calls put() for each sample or event, build_next() / rebuild(i) to
    get a frame's text as a memoryview of the shared buffer (valid until the next
    build), acked(seq) and refused(seq) when the gateway answers.
    """

    def __init__(self, nbytes, window, max_frame, batch, clock):
        self.ring = Ring(nbytes)
        self.window = window
        self.buf = bytearray(max_frame)
        self.mv = memoryview(self.buf)
        self.max_frame = max_frame
        self.batch = batch
        self.clock = clock
        # Frames in flight, oldest first: seq, bytes and records pinned in the ring.
        self.seqs = [0] * window
        self.nbytes = [0] * window
        self.nrecs = [0] * window
        self.n = 0
        self.next_seq = 1
        self.lost = 0  # samples lost before they reached the ring (MemoryError)

    @property
    def dropped(self):
        return self.ring.dropped + self.lost

    def buffered(self):
        return self.ring.count

    def idle(self):
        return not self.ring.count

    def put(self, flags, ts, payload):
        fault("ring")
        if len(payload) + _SAMPLE_OVERHEAD + _FRAME_OVERHEAD > self.max_frame:
            self.ring.dropped += 1  # could never be sent in one frame
            return False
        return self.ring.put(flags, ts, payload)

    def fill(self, parts):
        """Join parts (str/bytes) into the frame buffer: the hello, built between sessions
        while no frame is, without a large block of its own. -> a memoryview of the text,
        valid until the next build; a plain str if it does not fit."""
        buf = self.buf
        pos = 0
        for p in parts:
            m = memoryview(p)  # a str's UTF-8 bytes, no copy
            end = pos + len(m)
            if end > len(buf):
                return "".join(parts)
            buf[pos:end] = m
            pos = end
        return self.mv[:pos]

    def can_build(self):
        return self.n < self.window and self.ring.unpinned > 0

    # -- building ------------------------------------------------------------------

    def _w(self, pos, data):
        end = pos + len(data)
        self.buf[pos:end] = data
        return end

    def _render(self, seq, p, maxrecs, limit):
        """Write the frame starting at ring position p into buf; -> (length, bytes, records)."""
        rg = self.ring
        nxt, flags, ts, a, b = rg.record(p)
        fault("frame")
        if not flags & _WALL:
            ts = self.clock.ms(ts)
            rg.set_ts(p, flags | _WALL, ts)
        if flags & _EVENT:
            pos = self._w(0, b'{"type":"event","seq":')
            pos = self._w(pos, b"%d" % seq)
            pos = self._w(pos, b',"ts":')
            pos = self._w(pos, b"%d" % ts)
            pos = self._w(pos, b',"name":')
            pos = self._w(pos, rg.mv[a:b])
            pos = self._w(pos, b"}")
            return pos, nxt - p, 1
        pos = self._w(0, b'{"type":"readings","seq":')
        pos = self._w(pos, b"%d" % seq)
        pos = self._w(pos, b',"samples":[')
        q = p
        k = 0
        while True:
            if k:
                self.buf[pos] = 44  # ","
                pos += 1
            pos = self._w(pos, b'{"ts":')
            pos = self._w(pos, b"%d" % ts)
            pos = self._w(pos, b',"values":')
            pos = self._w(pos, rg.mv[a:b])
            pos = self._w(pos, b"}")
            k += 1
            q = nxt
            if k >= maxrecs or q >= rg.tail:
                break
            nxt, flags, ts, a, b = rg.record(q)
            if flags & _EVENT:
                break
            if limit and pos + (b - a) + _SAMPLE_OVERHEAD + 2 > limit:
                break
            fault("frame")
            if not flags & _WALL:
                ts = self.clock.ms(ts)
                rg.set_ts(q, flags | _WALL, ts)
        pos = self._w(pos, b"]}")
        return pos, q - p, k

    def build_next(self):
        """Build a new frame from the oldest unpinned records; -> (seq, text memoryview).

        The caller checked can_build(). On MemoryError nothing is pinned or spent.
        """
        seq = self.next_seq
        length, nb, nr = self._render(seq, self.ring.first_unpinned(), self.batch, self.max_frame)
        i = self.n
        self.seqs[i] = seq
        self.nbytes[i] = nb
        self.nrecs[i] = nr
        self.n = i + 1
        self.ring.pin(nb, nr)
        self.next_seq = seq + 1
        return seq, self.mv[:length]

    def rebuild(self, i):
        """The text of frame i in flight again (same records, same text)."""
        p = self.ring.head
        for j in range(i):
            p += self.nbytes[j]
        length, _, _ = self._render(self.seqs[i], p, self.nrecs[i], 0)
        return self.mv[:length]

    def first_unsent(self, sent_seq):
        for i in range(self.n):
            if self.seqs[i] > sent_seq:
                return i
        return -1

    # -- the gateway's answers -------------------------------------------------------

    def acked(self, seq):
        """Cumulative ack: free every frame with a seq <= seq."""
        while self.n and self.seqs[0] <= seq:
            self.ring.release(self.nbytes[0], self.nrecs[0])
            self._remove(0)

    def refused(self, seq):
        """The gateway refused frame seq (error): its records are lost and counted.
        Returns how many, or 0 if seq is not in flight."""
        off = 0
        for i in range(self.n):
            if self.seqs[i] == seq:
                nr = self.nrecs[i]
                self.ring.release(self.nbytes[i], nr, off, lost=True)
                self._remove(i)
                return nr
            off += self.nbytes[i]
        return 0

    def _remove(self, i):
        for j in range(i, self.n - 1):
            self.seqs[j] = self.seqs[j + 1]
            self.nbytes[j] = self.nbytes[j + 1]
            self.nrecs[j] = self.nrecs[j + 1]
        self.n -= 1

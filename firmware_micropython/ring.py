# iotgw firmware: the sample buffer, one bytearray sized in bytes, allocated once.
#
# Every sample or event is a record: [length u16][flags u8][ts u64][payload],
# little-endian, kept in order in buf[head:tail]. The frames in flight (built,
# sent or not, not yet acked) are the oldest records: they are "pinned" and never
# dropped, because the gateway may store them. When a new record does not fit,
# the oldest unpinned records are dropped and counted (mqtt_as's idea, in bytes):
# a long outage costs data, never RAM. Flags: EVENT (payload is
# '"name","data":{...}') and WALL (ts is ms since the epoch, not ticks_ms).
import struct

from micropython import const

HDR = const(11)  # public: the tests size rings with it
EVENT = 1  # outbox.py has const copies
WALL = 2


class Ring:
    """Records in one preallocated bytearray of `nbytes`; see the module comment.

    dropped counts records lost (full ring, or refused by the gateway). The caller
    pins records with pin() when it builds a frame and releases them with
    release() when the gateway acknowledges the frame.
    """

    def __init__(self, nbytes):
        if nbytes < 256:
            raise ValueError("buffer_bytes must be >= 256")
        self.buf = bytearray(nbytes)
        self.mv = memoryview(self.buf)
        self.head = 0
        self.tail = 0
        self.count = 0  # records
        self.pinned = 0  # bytes at the head held by frames in flight
        self.npinned = 0  # records pinned
        self.dropped = 0

    def __len__(self):
        return self.count

    @property
    def unpinned(self):
        return self.count - self.npinned

    def used(self):
        return self.tail - self.head

    def put(self, flags, ts, payload):
        """Append one record (payload: str or bytes). Returns False if it was dropped
        (too large, or the ring is all pinned frames): the caller counts nothing,
        `dropped` already did."""
        payload = memoryview(payload)  # a str's UTF-8 bytes, no copy
        n = HDR + len(payload)
        cap = len(self.buf)
        if n > cap // 4:
            self.dropped += 1
            return False
        while self.tail + n > cap:
            if self.tail - self.head + n <= cap:
                self._compact()
                break
            if self.count == self.npinned:
                self.dropped += 1  # nothing droppable: the new record is the one lost
                return False
            self._cut(self.pinned, self._len_at(self.head + self.pinned))
            self.count -= 1
            self.dropped += 1
        p = self.tail
        struct.pack_into("<HBQ", self.buf, p, n, flags, ts)
        self.buf[p + HDR : p + n] = payload
        self.tail = p + n
        self.count += 1
        return True

    def _len_at(self, p):
        return self.buf[p] | (self.buf[p + 1] << 8)

    def _compact(self):
        n = self.tail - self.head
        self.buf[0:n] = self.mv[self.head : self.tail]  # memmove
        self.head = 0
        self.tail = n

    def _cut(self, offset, nbytes):
        """Remove nbytes at head+offset, moving the offset bytes before them forward."""
        h = self.head
        if offset:
            self.buf[h + nbytes : h + nbytes + offset] = self.mv[h : h + offset]  # memmove
        self.head = h + nbytes
        if self.head == self.tail:
            self.head = self.tail = 0

    def record(self, p):
        """(next position, flags, ts, payload start, payload end) of the record at p."""
        n, flags, ts = struct.unpack_from("<HBQ", self.buf, p)
        return p + n, flags, ts, p + HDR, p + n

    def set_ts(self, p, flags, ts):
        struct.pack_into("<BQ", self.buf, p + 2, flags, ts)

    def first_unpinned(self):
        return self.head + self.pinned

    def pin(self, nbytes, nrecs):
        self.pinned += nbytes
        self.npinned += nrecs

    def release(self, nbytes, nrecs, offset=0, lost=False):
        """Free a pinned frame of nbytes/nrecs at head+offset (acked, or refused if lost)."""
        self._cut(offset, nbytes)
        self.pinned -= nbytes
        self.npinned -= nrecs
        self.count -= nrecs
        if lost:
            self.dropped += nrecs

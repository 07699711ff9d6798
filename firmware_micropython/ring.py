# iotgw firmware: fixed-size RAM ring buffer that drops the oldest when full.
#
# Like mqtt_as's queue: the slots are allocated once, a full ring overwrites
# its oldest item and counts the loss, so a long outage costs data, never RAM.


class Ring:
    """FIFO of at most `size` items; put() on a full ring drops the oldest.

    `dropped` counts items lost that way (the caller may add its own weight
    to it, e.g. the number of samples in a dropped frame, via on_drop).
    """

    def __init__(self, size, on_drop=None):
        if size < 1:
            raise ValueError("ring size must be >= 1")
        self._slots = [None] * size
        self._size = size
        self._head = 0  # index of the oldest item
        self._len = 0
        self._on_drop = on_drop
        self.dropped = 0

    def __len__(self):
        return self._len

    @property
    def size(self):
        return self._size

    def full(self):
        return self._len == self._size

    def put(self, item):
        """Append `item`; returns the dropped oldest item, or None."""
        lost = None
        if self._len == self._size:
            lost = self._slots[self._head]
            self._slots[self._head] = item
            self._head = (self._head + 1) % self._size
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop(lost)
            return lost
        self._slots[(self._head + self._len) % self._size] = item
        self._len += 1
        return lost

    def peek(self, i=0):
        """The i-th oldest item (0 = oldest) without removing it."""
        if not 0 <= i < self._len:
            raise IndexError("ring index out of range")
        return self._slots[(self._head + i) % self._size]

    def get(self):
        """Remove and return the oldest item."""
        if not self._len:
            raise IndexError("get from empty ring")
        item = self._slots[self._head]
        self._slots[self._head] = None  # let gc reclaim it now
        self._head = (self._head + 1) % self._size
        self._len -= 1
        return item

    def clear(self):
        while self._len:
            self.get()

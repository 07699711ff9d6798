# iotgw firmware: the hello's unchanging parts, rendered once at start (docs/firmware.md, "Memory").
#
# The app runs this module (and hello.py) once at start, before any session, and unloads
# both: the stream, agent, device, sensors and commands of every later hello are these bytes,
# kept in link._hbuf (`hello_bytes`); linkup.hello_text adds the counters and the info.
import ws as wsmod
from compat import AGENT

_COUNTERS = ',"last_acked":0,"buffered":0,"dropped":0'


def run(link):
    """Keep the unchanging parts in link._hbuf if they fit (-> None); else the whole hello
    text for this session, rendered by hello.py (the fallback, each session)."""
    import hello

    try:
        buf = link.out.buf  # free between sessions: the hello is written there first
        if link._hlen is None:  # the first time: keep the unchanging parts
            small = hello.hello(link.stream, AGENT, 0, (), (), 0, 0, {}, link.device, 1)
            h = small.find(_COUNTERS)
            small = None
            mv = hello.hello(link.stream, AGENT, 0, link.sensors, hello.describe(link.commands, link.outputs),
                             0, 0, {}, link.device, 1, buf)
            link._hlen = False
            if h > 0 and mv is not None:
                a = h + len(_COUNTERS)
                n = len(mv) - 11 - a  # up to ',"info":{}}'
                hb = link._hbuf
                if h + n <= len(hb):
                    hb[:h] = mv[:h]
                    hb[h : h + n] = mv[a : a + n]
                    link._hlen = (h, n)
                    return None
        info = link.info()
        return hello.hello(link.stream, AGENT, link.acked, link.sensors,
                           hello.describe(link.commands, link.outputs), link.buffered,
                           link.dropped, info, link.device, 1, buf) or hello.hello(
            link.stream, AGENT, link.acked, link.sensors, hello.describe(link.commands, link.outputs),
            link.buffered, link.dropped, info, link.device, 1)
    finally:
        wsmod.unload("hello")

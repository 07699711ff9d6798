# iotgw firmware: the app's rarely run code, loaded when it runs (docs/firmware.md, "Memory").
#
# App.command(name) imports this module for one call of run() and unloads it afterwards
# (ws.unload): the built-in commands, the welcome's settings and an update's trial hold
# no heap between uses. run() returns the command's coroutine (the app awaits it).
import asyncio

import compat
from compat import log
from ws import unload

# The floor on an interval set from outside (the set_interval command, welcome.settings):
# a mistyped "0.001" must not turn a board into a busy loop that floods the gateway
# and starves the link. The config's own interval_s is the owner's choice and is not raised.
MIN_REMOTE_INTERVAL_S = 0.5


def run(app, name, args):
    if name == "welcome":
        return welcome(app, args)
    return command(app, name, args)


def min_remote_s(app):
    return max(MIN_REMOTE_INTERVAL_S, app.cfg.get("min_interval_s", 1))


def welcome(app, settings):
    """At each welcome: the gateway's settings; at the first, keep an update on trial."""
    if app.cfg.get("follow_gateway_interval", True) and "interval_s" in settings:
        s = max(min_remote_s(app), float(settings["interval_s"]))
        app.interval_ms = int(s * 1000)
        log(1, "APP interval set by the gateway: %d ms" % app.interval_ms)
    if compat.OTA_TRIAL:  # an update on trial has reached the gateway: keep it
        import otaboot

        try:
            otaboot.confirm()
            compat.OTA_LAST = otaboot.last()
        finally:
            unload("otaboot")
            unload("ota")
        compat.OTA_TRIAL = None


async def command(app, name, args):
    if name == "ping":  # as the agent's: the page and Home Assistant learn output states from it
        return {"pong": True, "actuators": {n: app.outputs[n].value for n in app.outputs}}
    if name == "read_now":
        return await app.sample_once()
    if name == "set_interval":
        s = float(args["seconds"])
        low = min_remote_s(app)
        if not low <= s <= 86400:
            raise ValueError("seconds must be between %s and 86400" % low)
        app.interval_ms = int(s * 1000)
        return s
    if name == "ota":
        import ota

        try:
            value = ota.handle(args)
        finally:
            unload("ota")
        if isinstance(value, dict) and value.get("reboot"):
            asyncio.create_task(_reset_soon(app))  # after the result has gone out
        return value
    if name == "ota_trial":
        # An update that cannot reach the gateway resets the board until otaboot rolls it back.
        await asyncio.sleep_ms(int(app.cfg.get("ota_confirm_s", 300) * 1000))
        if compat.OTA_TRIAL:
            log(0, "OTA %s has not reached the gateway: resetting" % compat.OTA_TRIAL)
            compat.reset()
        return None
    # set, toggle, blink: the actuator vocabulary shared with the agent (actuate.py)
    import actuate

    try:
        return await actuate.run(app.outputs, name, args)
    finally:
        unload("actuate")


async def _reset_soon(app):
    await asyncio.sleep_ms(1000)
    log(0, "APP resetting for the update")
    await app.link.stop()
    compat.reset()

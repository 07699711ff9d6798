# iotgw firmware: apply a verified update at boot, roll it back if it never reaches the gateway.
#
# main.py calls boot() before importing the app (docs/firmware.md, "Over the air"):
#   ota.d/pending.json  a verified update (ota.py): the files it replaces move to ota.d/prev/,
#                     the new ones into place; ota.d/trial.json counts the boots on trial.
#   ota.d/trial.json  the app calls confirm() at its first `welcome`; a trial that reaches
#                     TRIAL_BOOTS boots without it is rolled back: ota.d/prev/ is restored.
# ota.d/last.json says what happened ("applied" / "rolled_back"); the app reports it in hello.
import json
import os

import compat
from ota import exists, mkdirs, path, rmtree

TRIAL_BOOTS = 2


def _move(src, dst):
    mkdirs(dst)
    if exists(dst):
        os.remove(dst)
    os.rename(src, dst)


def _write(name, obj):
    with open(path("ota.d", name), "w") as f:
        json.dump(obj, f)


def boot():
    """Apply or roll back; returns the trial's version while on trial, else None."""
    if exists(path("ota.d", "pending.json")):
        with open(path("ota.d", "pending.json")) as f:
            manifest = json.load(f)
        rmtree(path("ota.d", "prev"))
        prev = []
        for name in manifest["files"]:
            if exists(path(name)):
                _move(path(name), path("ota.d", "prev", name))
                prev.append(name)
            _move(path("ota.d", "new", name), path(name))
        _write("trial.json", {"version": manifest["version"], "boots": 0, "files": list(manifest["files"]),
                              "prev": prev})
        os.remove(path("ota.d", "pending.json"))
        compat.log(0, "OTA applied %s: on trial" % manifest["version"])
    if not exists(path("ota.d", "trial.json")):
        return None
    with open(path("ota.d", "trial.json")) as f:
        trial = json.load(f)
    trial["boots"] += 1
    if trial["boots"] > TRIAL_BOOTS:
        for name in trial["files"]:
            if name not in trial["prev"] and exists(path(name)):
                os.remove(path(name))
        for name in trial["prev"]:
            _move(path("ota.d", "prev", name), path(name))
        os.remove(path("ota.d", "trial.json"))
        _write("last.json", {"rolled_back": trial["version"]})
        compat.log(0, "OTA rolled back %s: it never reached the gateway" % trial["version"])
        return None
    _write("trial.json", trial)
    compat.log(0, "OTA trial boot %d of %s" % (trial["boots"], trial["version"]))
    return trial["version"]


def confirm():
    """The new firmware reached the gateway: keep it."""
    with open(path("ota.d", "trial.json")) as f:
        version = json.load(f)["version"]
    os.remove(path("ota.d", "trial.json"))
    rmtree(path("ota.d", "prev"))
    _write("last.json", {"applied": version})
    compat.log(0, "OTA confirmed %s" % version)


def last():
    """What the last update did, for hello's info: "applied 0.2.0", "rolled_back 0.2.0" or None."""
    try:
        with open(path("ota.d", "last.json")) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return None
    for k in d:
        return "%s %s" % (k, d[k])
    return None

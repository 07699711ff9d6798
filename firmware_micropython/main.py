# iotgw firmware entry point: runs after boot.py on a board; on the unix port
#   IOTGW_CONFIG=config.json micropython main.py     (or: micropython main.py config.json)
import os
import sys

import compat

if "/" in __file__:
    # The unix port runs /path/to/main.py: run in that directory, as a board runs in its
    # filesystem's root, and import from it by relative names ("ring.mpy", the name mpy-cross
    # gave the module): each module's file name is interned for good, a long path costs heap.
    compat.CWD = os.getcwd() + "/"  # a relative config path is the caller's (appboot.config_path)
    os.chdir(__file__.rsplit("/", 1)[0])
    sys.path[0] = ""
try:  # no ota.d/: never updated, nothing to apply (and otaboot's names cost no heap)
    os.stat(compat.ROOT + "ota.d")
    state = None
except OSError:
    state = (compat.ROOT, None, None)
if state is None:
    import otaboot  # noqa: E402  (apply or roll back an update before the app is imported)

    state = (compat.ROOT, otaboot.boot(), otaboot.last())
    del sys.modules["otaboot"], sys.modules["ota"], otaboot
# The update may have replaced compat.py itself: forget what was loaded before it.
del sys.modules["compat"], compat
import compat  # noqa: E402

compat.ROOT, compat.OTA_TRIAL, compat.OTA_LAST = state
del state
import app  # noqa: E402

app.run()

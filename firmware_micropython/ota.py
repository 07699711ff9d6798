# iotgw firmware: over-the-air update, the receiving side (docs/firmware.md, "Over the air").
#
# The gateway has no special channel for it: `iotgw firmware ota` sends ordinary `ota`
# commands down the device's own connection, so the command ledger records every step.
#   {"op": "begin", "version": V, "files": {name: sha256 hex}}   start a new staging area
#   {"op": "chunk", "name": N, "offset": O, "data": base64}      append (idempotent on resend)
#   {"op": "commit"}          verify every file's sha256, mark the update pending, reboot
# otaboot.py applies a pending update at the next boot and rolls it back if the new
# firmware does not reach the gateway. Loaded per command and unloaded afterwards.
import binascii
import hashlib
import json
import os

import compat

NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_./"


def path(*parts):
    return compat.ROOT + "/".join(parts)


def exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def mkdirs(p):
    """Create the directories above file path p."""
    parts = p.split("/")[:-1]
    cur = ""
    for i, part in enumerate(parts):
        cur = part if i == 0 else cur + "/" + part
        if cur and not exists(cur):
            os.mkdir(cur)


def rmtree(p):
    if not exists(p):
        return
    if os.stat(p)[0] & 0x4000:  # a directory
        for entry in os.listdir(p):
            rmtree(p + "/" + entry)
        os.rmdir(p)
    else:
        os.remove(p)


def check_name(name):
    if not name or ".." in name or name[0] == "/" or any(c not in NAME_CHARS for c in name):
        raise ValueError("bad file name %r" % name)
    return name


def sha256_of(p):
    h = hashlib.sha256()
    buf = bytearray(512)
    with open(p, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(memoryview(buf)[:n])
    return binascii.hexlify(h.digest()).decode()


def handle(args):
    """Run one `ota` command; returns its result value. Raises ValueError on a bad request."""
    op = args.get("op")
    if op == "begin":
        files = args["files"]
        for name in files:
            check_name(name)
        rmtree(path("ota.d", "new"))
        mkdirs(path("ota.d", "new", "x"))
        with open(path("ota.d", "new.json"), "w") as f:
            json.dump({"version": str(args.get("version", "?")), "files": files}, f)
        return {"ready": len(files)}
    if op == "chunk":
        name = check_name(args["name"])
        target = path("ota.d", "new", name)
        mkdirs(target)
        size = os.stat(target)[6] if exists(target) else 0
        offset = int(args["offset"])
        if offset < size:
            return size  # a resend of what is already here
        if offset > size:
            raise ValueError("%s: expected offset %d, got %d" % (name, size, offset))
        data = binascii.a2b_base64(args["data"])
        with open(target, "ab") as f:
            f.write(data)
        return size + len(data)
    if op == "commit":
        with open(path("ota.d", "new.json")) as f:
            manifest = json.load(f)
        for name in manifest["files"]:
            got = sha256_of(path("ota.d", "new", name))
            if got != manifest["files"][name]:
                raise ValueError("%s: sha256 %s, expected %s" % (name, got, manifest["files"][name]))
        os.rename(path("ota.d", "new.json"), path("ota.d", "pending.json"))
        return {"version": manifest["version"], "verified": len(manifest["files"]), "reboot": True}
    raise ValueError("op must be begin, chunk or commit")

"""Raw HTTP/1.1 over a socket, for tests where the point is what the gateway does before a request
is complete (a body that grows past a limit, one that never arrives)."""

from __future__ import annotations

import socket


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One whole HTTP/1.1 response (Content-Length bodies only): status, headers, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed in the middle of a body"
        body += chunk
    return int(lines[0].split()[1]), headers, body[:length]


__all__ = ["read_response"]

"""TLS contexts for both sides of the device plane and the operator API (stdlib ``ssl`` only).

The gateway serves ``wss://`` and ``https://`` from one :func:`server_context`;
the agent (and any Python client) connects with :func:`client_context`, which
verifies the peer by default: the certificate must chain to the system CAs or
to ``ca_file`` (the site CA of ``iotgw tls init-ca``, docs/security.md) and name
the host in the URL. Turning verification off is an explicit choice the caller
must log (the agent warns on every connect).

Who calls what:

- ``server_context(cert, key)`` once at start; ``reload_server_context(ctx, cert, key)``
  on SIGHUP: new handshakes get the new certificate, open connections keep theirs.
  A pair that does not load leaves ``ctx`` untouched and raises :class:`TlsError`.
- ``client_context(ca_file=..., verify=...)`` per connection attempt, so a CA file
  replaced on disk is picked up at the next reconnect.
- ``explain(exc)`` turns a handshake failure into one sentence that says what to
  change (CA, name, clock, scheme), for a log line instead of a traceback.
- ``is_loopback(host)`` tells whether a bind address is reachable only from this machine.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

MIN_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
"""Accepted ``min_version`` names; TLS 1.0 and 1.1 are never offered (RFC 8996)."""


class TlsError(ValueError):
    """A certificate, key or CA file cannot be used; the message names the file and the reason."""


def server_context(cert: str | Path, key: str | Path, *, min_version: str = "TLSv1.2") -> ssl.SSLContext:
    """A server context holding the certificate chain ``cert`` (PEM, leaf first) and ``key``.

    Raises :class:`TlsError` when a file is missing, unreadable, not PEM, or the key
    does not match the certificate. The caller keeps the context for the life of the
    servers that use it and passes it to :func:`reload_server_context` on reload.
    """
    if min_version not in MIN_VERSIONS:
        raise TlsError(f"min_version {min_version!r}: expected one of {', '.join(MIN_VERSIONS)}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSIONS[min_version]
    _load_pair(context, cert, key)
    return context


def reload_server_context(context: ssl.SSLContext, cert: str | Path, key: str | Path) -> None:
    """Load a new certificate and key into ``context`` for the handshakes that follow.

    The pair is tried on a scratch context first, so a half-written or mismatched
    pair raises :class:`TlsError` and the running servers keep the old one.
    """
    _load_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key)
    _load_pair(context, cert, key)


def client_context(
    *, ca_file: str | Path | None = None, verify: bool = True, min_version: str = "TLSv1.2"
) -> ssl.SSLContext:
    """A client context: verify the server against the system CAs, or ``ca_file`` if given.

    ``verify=False`` accepts any certificate and any name (encryption without
    authentication: a man in the middle goes unnoticed); the caller must warn about it.
    Raises :class:`TlsError` when ``ca_file`` cannot be read as PEM certificates.
    """
    if not verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_file is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname, CERT_REQUIRED
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(f"CA file {ca_file}: {_reason(exc)}") from None
    else:
        context = ssl.create_default_context()
    context.minimum_version = MIN_VERSIONS.get(min_version, ssl.TLSVersion.TLSv1_2)
    return context


def explain(exc: BaseException) -> str:
    """One sentence for a failed TLS handshake (or a TLS/plain-text mismatch): what to change."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or _reason(exc)
        code = exc.verify_code
        if "Hostname mismatch" in detail or "IP address mismatch" in detail:
            hint = (
                "the certificate does not name this host: connect with a name or IP it lists, or reissue it"
            )
        elif code == 10 or "expired" in detail:  # X509_V_ERR_CERT_HAS_EXPIRED
            hint = "the certificate has expired (or this clock is wrong): renew it, check NTP"
        elif code == 9 or "not yet valid" in detail:  # X509_V_ERR_CERT_NOT_YET_VALID
            hint = "the certificate is not valid yet: this clock is probably behind, check NTP"
        else:  # unknown issuer, self-signed, ...
            hint = "the certificate is not signed by a CA this side trusts: set the site CA file (ca_file)"
        return f"certificate verification failed ({detail}): {hint}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in (
            "WRONG_VERSION_NUMBER",
            "HTTP_REQUEST",
            "RECORD_LAYER_FAILURE",
            "PACKET_LENGTH_TOO_LONG",
        ):
            return f"TLS failed ({reason}): the other side does not speak TLS here; check ws:// versus wss://"
        if reason in ("TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "TLSV1_ALERT_DECRYPT_ERROR"):
            return f"TLS failed ({reason}): the peer refused our certificate"
        return f"TLS failed: {_reason(exc)}"
    return str(exc) or type(exc).__name__


def is_loopback(host: str) -> bool:
    """True when ``host`` binds only loopback (127.0.0.0/8, ::1, localhost); '' and 0.0.0.0 are not."""
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def _load_pair(context: ssl.SSLContext, cert: str | Path, key: str | Path) -> None:
    for what, path in (("certificate", cert), ("key", key)):
        if not Path(path).is_file():
            raise TlsError(f"TLS {what} file {path} does not exist")
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsError(f"TLS key {key} does not belong to the certificate {cert}") from None
        raise TlsError(f"TLS certificate {cert} / key {key}: {_reason(exc)}") from None
    except OSError as exc:
        raise TlsError(f"TLS certificate {cert} / key {key}: {exc.strerror or exc}") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


__all__ = [
    "MIN_VERSIONS",
    "TlsError",
    "client_context",
    "explain",
    "is_loopback",
    "reload_server_context",
    "server_context",
]

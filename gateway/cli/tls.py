"""``iotgw tls``: a site CA and the certificates it signs, for ``wss://`` and ``https://``.

``iotgw tls init-ca DIR`` makes ``DIR/ca.pem`` (the CA certificate: give it to every
agent, board and operator tool), ``DIR/ca.der`` (the same, DER, for boards) and
``DIR/ca.key`` (mode 0600: keep it off the network). ``iotgw tls issue --ca DIR --name
gateway.local --ip 192.168.1.10`` signs ``NAME.pem`` + ``NAME.key`` for the gateway's
``[tls] cert`` and ``key``; ``iotgw tls show FILE`` prints a certificate's names and dates.
docs/security.md is the how-to, including how to use an existing CA instead.

What the files are, so any TLS stack accepts them (CPython's strict X.509 mode, OpenSSL,
mbedTLS on MicroPython boards): EC P-256 keys by default (``--key-type rsa`` for RSA 2048),
SHA-256 signatures; the CA has critical basicConstraints (CA, path length 0) and keyUsage
(certificate and CRL signing); a leaf has basicConstraints CA:false, keyUsage digital
signature (+ key encipherment for RSA), extended key usage serverAuth and clientAuth, a
subjectAltName with every ``--name`` and ``--ip`` (and ``localhost``/``127.0.0.1`` unless
``--no-loopback``), and subject/authority key identifiers. Validity starts an hour back,
so a device whose clock lags a little still accepts a fresh certificate.

The functions :func:`init_ca` and :func:`issue` are the same operations for tests and
scripts; each returns the paths it wrote and raises :class:`CertError` with a message
for the user (existing files are never overwritten without ``force``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

KeyType = Literal["ec", "rsa"]
CA_CERT, CA_DER, CA_KEY = "ca.pem", "ca.der", "ca.key"
LOOPBACK_NAMES = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1",)
_DNS_NAME = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$"
)


class CertError(ValueError):
    """The CA or certificate cannot be made as asked; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class IssuedFiles:
    """Paths written by :func:`init_ca` (``cert`` = ca.pem) or :func:`issue` (``cert`` = NAME.pem)."""

    cert: Path
    key: Path
    der: Path | None = None
    names: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    not_after: dt.datetime | None = None


def init_ca(
    directory: str | Path,
    *,
    common_name: str = "iotgw site CA",
    days: int = 3650,
    key_type: KeyType = "ec",
    force: bool = False,
) -> IssuedFiles:
    """Make a self-signed CA in ``directory`` (created if missing): ca.pem, ca.der, ca.key (0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, der_path, key_path = folder / CA_CERT, folder / CA_DER, folder / CA_KEY
    if key_path.exists() and not force:
        raise CertError(f"{key_path} exists: a CA is already there (delete it first to start over)")
    key = _new_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True, encipher=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    _write(der_path, cert.public_bytes(serialization.Encoding.DER))
    return IssuedFiles(cert_path, key_path, der_path, (common_name,), (), cert.not_valid_after_utc)


def issue(
    ca_dir: str | Path,
    names: list[str],
    ips: list[str],
    *,
    out_dir: str | Path | None = None,
    days: int = 825,
    key_type: KeyType = "ec",
    loopback: bool = True,
    force: bool = False,
) -> IssuedFiles:
    """Sign a certificate for ``names`` (DNS) and ``ips`` with the CA in ``ca_dir``.

    Writes ``OUT/FIRST.pem`` and ``OUT/FIRST.key`` (0600), FIRST being the first name (or IP);
    ``out_dir`` defaults to ``ca_dir``. Raises :class:`CertError` for a bad name or IP, a
    missing CA, or files that exist (unless ``force``: renewing replaces them).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    dns = _check_names(names) + [n for n in LOOPBACK_NAMES if loopback and n not in names]
    addresses = _check_ips(ips) + [
        ipaddress.ip_address(ip) for ip in LOOPBACK_IPS if loopback and ip not in ips
    ]
    if not names and not ips:
        raise CertError("give at least one --name or --ip: the names clients use to reach this host")
    first = names[0].lstrip("*.") if names else str(addresses[0])
    ca_cert, ca_key = _load_ca(Path(ca_dir))
    folder = Path(out_dir) if out_dir is not None else Path(ca_dir)
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{first}.pem", folder / f"{first}.key"
    if not force and (cert_path.exists() or key_path.exists()):
        raise CertError(f"{cert_path} exists: pass --force to replace it (renewal)")
    key = _new_key(key_type)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    end = min(start + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    san += [x509.IPAddress(a) for a in addresses]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False, encipher=key_type == "rsa"), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    shown_ips = tuple(str(a) for a in addresses)
    return IssuedFiles(cert_path, key_path, None, tuple(dns), shown_ips, cert.not_valid_after_utc)


def describe(path: str | Path) -> str:
    """Subject, issuer, names, validity and fingerprint of the PEM certificate(s) in ``path``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise CertError(f"{path}: not a readable PEM certificate ({exc})") from None
    lines = []
    for cert in certs:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            alt = [str(v) for v in san.get_values_for_type(x509.DNSName)]
            alt += [str(v) for v in san.get_values_for_type(x509.IPAddress)]
        except x509.ExtensionNotFound:
            alt = []
        lines += [
            f"subject:     {cert.subject.rfc4514_string()}",
            f"issuer:      {cert.issuer.rfc4514_string()}",
            f"names:       {', '.join(alt) or '(none: clients will refuse it as a server certificate)'}",
            f"valid:       {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
            f"sha256:      {cert.fingerprint(hashes.SHA256()).hex(':')}",
        ]
    return "\n".join(lines)


# -- the command line ---------------------------------------------------------------------


def add_tls_commands(sub: Any) -> None:
    """Register ``tls init-ca``, ``tls issue`` and ``tls show`` on ``iotgw``'s sub-parsers."""
    tls = sub.add_parser("tls", help="a site CA and certificates for wss:// and https://")
    actions = tls.add_subparsers(title="tls commands", metavar="ACTION")
    init = actions.add_parser("init-ca", help="make a site CA in DIR (ca.pem, ca.der, ca.key)")
    init.add_argument("dir", type=Path)
    init.add_argument("--cn", default="iotgw site CA", help="the CA's common name")
    init.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")
    init.add_argument(
        "--key-type", choices=["ec", "rsa"], default="ec", help="EC P-256 (default) or RSA 2048"
    )
    init.set_defaults(func=_init_ca)
    iss = actions.add_parser("issue", help="sign a certificate for the gateway (or any host) with the CA")
    iss.add_argument(
        "--ca", required=True, type=Path, metavar="DIR", help="the CA directory (ca.pem, ca.key)"
    )
    iss.add_argument("--name", action="append", default=[], help="a DNS name clients use (repeatable)")
    iss.add_argument("--ip", action="append", default=[], help="an IP address clients use (repeatable)")
    iss.add_argument(
        "--out", type=Path, metavar="DIR", help="where to write NAME.pem/NAME.key (default: --ca)"
    )
    iss.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    iss.add_argument("--key-type", choices=["ec", "rsa"], default="ec", help="EC P-256 (default) or RSA 2048")
    iss.add_argument("--no-loopback", action="store_true", help="leave localhost/127.0.0.1 out of the names")
    iss.add_argument("--force", action="store_true", help="replace an existing certificate (renewal)")
    iss.set_defaults(func=_issue)
    show = actions.add_parser("show", help="print a certificate's names, issuer and validity")
    show.add_argument("file", type=Path)
    show.set_defaults(func=_show)


def _init_ca(args: argparse.Namespace) -> int:
    try:
        files = init_ca(args.dir, common_name=args.cn, days=args.days, key_type=args.key_type)
    except CertError as exc:
        return _fail(exc)
    print(f"site CA written to {args.dir}/:")
    print(f"  {files.cert}  the CA certificate: copy it to every agent, board and operator tool")
    print(f"  {files.der}  the same in DER (a board's config may name either)")
    print(f"  {files.key}  the CA key (mode 0600): keep it here, offline if you can; it signs certificates")
    print(f"next: iotgw tls issue --ca {args.dir} --name <gateway's DNS name> --ip <gateway's IP>")
    return 0


def _issue(args: argparse.Namespace) -> int:
    try:
        files = issue(args.ca, args.name, args.ip, out_dir=args.out, days=args.days, key_type=args.key_type,
                      loopback=not args.no_loopback, force=args.force)  # fmt: skip
    except CertError as exc:
        return _fail(exc)
    host = (args.name or args.ip)[0]
    ca = Path(args.ca) / CA_CERT
    until = f"{files.not_after:%Y-%m-%d}" if files.not_after else "?"
    print(f"wrote {files.cert} and {files.key} (valid until {until})")
    print(f"  names: {', '.join(files.names) or '-'}; IPs: {', '.join(files.ips) or '-'}")
    print("gateway (gateway.toml), then restart it, or for a renewal `systemctl kill -s HUP iotgw`:")
    print(f'  [tls]\n  cert = "{files.cert.resolve()}"\n  key = "{files.key.resolve()}"')
    print(f"agents: copy {ca} to /etc/iotgw/ca.pem, then in agent.toml:")
    print(f'  [gateway]\n  url = "wss://{host}:8765/v1/device"\n  ca_file = "/etc/iotgw/ca.pem"')
    print(
        f"boards: copy {ca} next to the firmware and name it in config.json (firmware_micropython/README.md)"
    )
    print(f"operators: https://{host}:8080/ trusting {ca}: curl --cacert {ca}; SSL_CERT_FILE={ca} iotgw ...")
    return 0


def _show(args: argparse.Namespace) -> int:
    try:
        print(describe(args.file))
    except CertError as exc:
        return _fail(exc)
    return 0


def _fail(exc: Exception) -> int:
    import sys

    print(f"iotgw tls: {exc}", file=sys.stderr)
    return 2


# -- helpers ------------------------------------------------------------------------------


def _new_key(key_type: KeyType) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _key_usage(*, cert_sign: bool, encipher: bool) -> Any:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=encipher,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    data: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return data


def _load_ca(folder: Path) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise CertError(f"{exc.filename} is missing: make a CA with `iotgw tls init-ca {folder}`") from None
    except (OSError, ValueError, TypeError) as exc:
        raise CertError(
            f"the CA in {folder} cannot be read ({exc}): an unencrypted PEM key is needed"
        ) from None
    try:
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        raise CertError(f"{cert_path} has no subject key identifier: not usable as a CA here") from None
    return cert, key


def _check_names(names: list[str]) -> list[str]:
    for name in names:
        if _is_ip(name):
            raise CertError(f"--name {name!r} is an IP address: pass it as --ip")
        if not _DNS_NAME.match(name.lower()) or len(name) > 253:
            raise CertError(f"--name {name!r} is not a DNS name (an IP address goes in --ip)")
    return [n.lower() for n in names]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_ips(ips: list[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(ip) for ip in ips]
    except ValueError as exc:
        raise CertError(f"--ip: {exc}") from None


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write atomically; a private file is created 0600 so the key is never readable by others."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)

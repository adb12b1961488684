"""TLS certificates and SuperNode keys for a deployment, made with ``cryptography``.

``fedft certs`` writes, into one folder:

========================  ==================================================================
``ca.pem``                the certificate authority; every client gets a copy (``--certs``)
``ca.key``                the CA's private key (mode 0600; keep it off the server if you can)
``server.pem``            the SuperLink's certificate, signed by the CA, with a SAN per
                          ``--host`` name and ``--ip`` address clients will dial
``server.key``            the SuperLink's private key (mode 0600)
``supernode-<i>.key``     with ``--supernodes N``: SuperNode *i*'s private key (OpenSSH, 0600)
``supernode-<i>.pub``     its public key (OpenSSH), what ``flwr supernode register`` takes
``supernodes.pub``        every ``supernode-*.pub``, one a line: ``fedft server --auth-keys``
========================  ==================================================================

Running it again in the same folder changes only what was asked for: the CA is reused (clients
that trust it keep working), the server certificate is kept with its names unless ``--host`` or
``--ip`` name different ones (then it is re-issued for exactly those, and the command says so),
and existing SuperNode keys are never overwritten. Every file is written atomically; private
keys are created mode 0600, never wider even for a moment.
All keys are ECDSA on NIST P-384 (Flower's SuperNode authentication requires a NIST curve).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedft.errors import FedftError

CA_CERT, CA_KEY = "ca.pem", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
SUPERNODES_PUB = "supernodes.pub"
CA_DAYS = 3650


class CertError(FedftError, ValueError):
    """A certificate option or file is wrong (a bad IP, an unreadable CA, a missing file)."""


@dataclass(frozen=True)
class CertFiles:
    """What ``make_certs`` wrote (or reused) in one folder."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    supernode_keys: tuple[Path, ...] = ()
    supernodes_pub: Path | None = None
    server_status: str = "new"  # "new", "kept" (as it was) or "re-issued" (for new names)
    server_names: tuple[str, ...] = ()
    previous_server_names: tuple[str, ...] = ()


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedft"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_ca(
    common_name: str = "fedft CA", days: int = CA_DAYS
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign server certificates only (path length 0)."""
    key = _new_key()
    start = _now() - datetime.timedelta(minutes=5)  # tolerate small clock skew
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: list[str],
    ips: list[str],
    days: int = 365,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server certificate signed by the CA, valid for each host name and IP address.

    Parameters
    ----------
    ca_key, ca_cert : the signing CA (from :func:`make_ca` or read back from disk).
    hosts : DNS names clients dial (subjectAltName DNS entries); the first is the common name.
    ips : IPv4 or IPv6 addresses clients dial (subjectAltName IP entries).
    days : validity in days.
    """
    if not hosts and not ips:
        raise CertError("`--host`/`--ip`: give at least one name or address clients will dial")
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hosts]
    sans += [x509.IPAddress(parse_ip(ip)) for ip in ips]
    key = _new_key()
    start = _now() - datetime.timedelta(minutes=5)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0] if hosts else ips[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def make_supernode_key() -> tuple[bytes, bytes]:
    """A SuperNode authentication key pair as (OpenSSH private key, OpenSSH public key line)."""
    key = _new_key()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IP address, or a :class:`CertError` naming ``--ip``."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise CertError(f"`--ip`: {text!r} is not an IPv4 or IPv6 address") from None


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_file(path: Path, data: bytes, private: bool = False) -> None:
    """Write ``path`` atomically; a private file is created owner-only (0600) from the start.

    The bytes go to a new temporary file in the same folder, created with its final mode
    (``O_CREAT | O_EXCL``: never an existing file, never a wider mode, even for a moment), which
    then replaces ``path`` in one rename: a reader sees the old file or the new one, never half.
    """
    mode = 0o600 if private else 0o644
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            if private:
                os.fchmod(out.fileno(), mode)  # exactly 0600, whatever the umask
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load_ca(folder: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None:
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    if not cert_path.is_file() and not key_path.is_file():
        return None
    if not (cert_path.is_file() and key_path.is_file()):
        raise CertError(f"`--out`: {folder} has only one of {CA_CERT} and {CA_KEY}")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError as err:
        raise CertError(f"`--out`: cannot reuse the CA in {folder}: {err}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"`--out`: {folder / CA_KEY} is not an EC key")
    return key, cert


def _server_sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses (as text) a server certificate is valid for."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return sans.get_values_for_type(x509.DNSName), [
        str(ip) for ip in sans.get_values_for_type(x509.IPAddress)
    ]


def _current_server_cert(folder: Path, ca_cert: x509.Certificate) -> x509.Certificate | None:
    """The folder's server certificate if it can serve as is: its key, this CA, not expired."""
    cert_path, key_path = folder / SERVER_CERT, folder / SERVER_KEY
    if not (cert_path.is_file() and key_path.is_file()):
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return None
    if key.public_key() != cert.public_key() or cert.not_valid_after_utc <= _now():
        return None
    return cert


def _issue_server_cert(
    folder: Path,
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    hosts: list[str],
    ips: list[str],
    days: int,
) -> tuple[str, list[str], list[str]]:
    """Keep or (re-)issue the server certificate; return what happened, its names, the old ones.

    Without ``hosts`` and ``ips`` an existing certificate is kept with its names (or re-issued
    for the same names if it no longer fits the CA, its key or the date); only a folder without
    one gets ``localhost`` and ``127.0.0.1``. Names that differ from the existing certificate's
    re-issue it for exactly those names.
    """
    ips = [str(parse_ip(ip)) for ip in ips]
    old_path = folder / SERVER_CERT
    old = x509.load_pem_x509_certificate(old_path.read_bytes()) if old_path.is_file() else None
    old_hosts, old_ips = _server_sans(old) if old is not None else ([], [])
    if not hosts and not ips:
        hosts, ips = (
            (old_hosts, old_ips) if old_hosts or old_ips else (["localhost"], ["127.0.0.1"])
        )
    if (hosts, ips) == (old_hosts, old_ips) and _current_server_cert(folder, ca[1]) is not None:
        return "kept", hosts + ips, old_hosts + old_ips
    key, cert = make_server_cert(ca[0], ca[1], hosts, ips, days)
    write_file(folder / SERVER_KEY, _key_pem(key), private=True)
    write_file(folder / SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return ("re-issued" if old is not None else "new"), hosts + ips, old_hosts + old_ips


def _supernode_key(private_path: Path) -> None:
    """Make SuperNode key pair ``private_path`` (and its ``.pub``) unless it exists."""
    public_path = private_path.with_suffix(".pub")
    if private_path.is_file():
        if not public_path.is_file():  # a run stopped between the two files
            key = serialization.load_ssh_private_key(private_path.read_bytes(), None)
            public = key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            write_file(public_path, public + b"\n")
        return
    private, public = make_supernode_key()
    write_file(private_path, private, private=True)
    write_file(public_path, public + b"\n")


def make_certs(
    folder: Path,
    hosts: list[str] | None = None,
    ips: list[str] | None = None,
    supernodes: int = 0,
    days: int = 365,
) -> CertFiles:
    """Write (or reuse) the CA, the server certificate and ``supernodes`` SuperNode key pairs.

    Parameters
    ----------
    folder : where the files go (created if missing).
    hosts, ips : the names and addresses clients dial; none keeps the existing server
        certificate's (see :func:`_issue_server_cert`).
    supernodes : how many SuperNode key pairs the folder must hold; existing ones are kept.
    days : validity of a newly issued server certificate.
    """
    if supernodes < 0:
        raise CertError(f"`--supernodes`: must be >= 0, got {supernodes}")
    if days <= 0:
        raise CertError(f"`--days`: must be > 0, got {days}")
    for ip in ips or []:
        parse_ip(ip)
    folder.mkdir(parents=True, exist_ok=True)
    ca = _load_ca(folder)
    if ca is None:
        ca = make_ca()
        write_file(folder / CA_KEY, _key_pem(ca[0]), private=True)
        write_file(folder / CA_CERT, ca[1].public_bytes(serialization.Encoding.PEM))
    status, names, before = _issue_server_cert(folder, ca, list(hosts or []), list(ips or []), days)
    keys = []
    for i in range(supernodes):
        _supernode_key(folder / f"supernode-{i}.key")
        keys.append(folder / f"supernode-{i}.key")
    pubs = sorted(folder.glob("supernode-*.pub"))
    listing = None
    if pubs:
        listing = folder / SUPERNODES_PUB
        write_file(listing, "".join(p.read_text().strip() + "\n" for p in pubs).encode())
    return CertFiles(
        folder / CA_CERT,
        folder / SERVER_CERT,
        folder / SERVER_KEY,
        tuple(keys),
        listing,
        server_status=status,
        server_names=tuple(names),
        previous_server_names=tuple(before),
    )


def server_names(cert_path: Path) -> list[str]:
    """The DNS names, then IP addresses, a server certificate is valid for."""
    hosts, ips = _server_sans(x509.load_pem_x509_certificate(cert_path.read_bytes()))
    return hosts + ips

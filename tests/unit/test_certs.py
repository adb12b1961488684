"""`fedft certs`: the CA signs a server certificate valid for exactly the names asked for."""

import ipaddress
import socket
import ssl
import stat
import subprocess
import sys
import threading

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedft.deploy.certs import CertError, make_certs, server_names


def load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    return make_certs(folder, ["fedft.example", "localhost"], ["10.0.0.7", "::1"], supernodes=2)


def test_server_certificate_names_every_host_and_ip(files):
    cert = load(files.server_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["fedft.example", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("::1"),
    ]
    assert server_names(files.server_cert) == ["fedft.example", "localhost", "10.0.0.7", "::1"]


def test_ca_chain_verifies_for_its_names_only(files, tmp_path):
    ca, server = load(files.ca_cert), load(files.server_cert)
    server.verify_directly_issued_by(ca)  # raises if the signature or issuer does not match
    other = make_certs(tmp_path / "other", ["localhost"], [])
    with pytest.raises(InvalidSignature):
        server.verify_directly_issued_by(load(other.ca_cert))
    policy = x509.verification.PolicyBuilder().store(x509.verification.Store([ca]))
    for name in (x509.DNSName("fedft.example"), x509.IPAddress(ipaddress.ip_address("10.0.0.7"))):
        assert policy.build_server_verifier(name).verify(server, [])[-1] == ca
    with pytest.raises(x509.verification.VerificationError):
        policy.build_server_verifier(x509.DNSName("elsewhere.example")).verify(server, [])


def test_a_tls_handshake_on_loopback_succeeds_with_the_ca_and_fails_without(tmp_path):
    files = make_certs(tmp_path, ["localhost"], ["127.0.0.1"])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.server_cert, files.server_key)

    def handshake(client_ctx, host):
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.settimeout(10)
            port = listener.getsockname()[1]
            accepted = []

            def serve():
                try:
                    conn, _ = listener.accept()
                    with server_ctx.wrap_socket(conn, server_side=True) as tls:
                        accepted.append(tls.version())
                except (ssl.SSLError, OSError):
                    pass

            thread = threading.Thread(target=serve)
            thread.start()
            try:
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                    client_ctx.wrap_socket(raw, server_hostname=host) as tls,
                ):
                    return tls.version()
            finally:
                thread.join(timeout=10)

    trusting = ssl.create_default_context(cafile=str(files.ca_cert))
    assert handshake(trusting, "localhost").startswith("TLS")
    assert handshake(trusting, "127.0.0.1").startswith("TLS")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ssl.create_default_context(), "localhost")  # system CAs do not know ours
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(trusting, "elsewhere.example")  # not a SAN


def test_key_usage_ca_signs_certificates_and_server_only_serves(files):
    ca, server = load(files.ca_cert), load(files.server_cert)
    ca_basic = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert ca_basic.ca and ca_basic.path_length == 0
    ca_usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ca_usage.key_cert_sign and ca_usage.crl_sign
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = server.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    extended = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(extended) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_private_keys_are_owner_only_and_supernode_keys_are_openssh_ec(files):
    for path in (files.server_key, files.ca_cert.with_name("ca.key"), *files.supernode_keys):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in files.supernode_keys:
        key = serialization.load_ssh_private_key(path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        public = serialization.load_ssh_public_key(path.with_suffix(".pub").read_bytes())
        assert public.public_numbers() == key.public_key().public_numbers()
    listed = files.supernodes_pub.read_text().splitlines()
    assert len(listed) == 2 and all(line.startswith("ecdsa-sha2-nistp384 ") for line in listed)


def test_rerun_reuses_the_ca_and_keeps_supernode_keys(files):
    folder = files.ca_cert.parent
    ca_before, key_before = files.ca_cert.read_bytes(), files.supernode_keys[0].read_bytes()
    again = make_certs(folder, ["new.example"], [], supernodes=3)
    assert again.ca_cert.read_bytes() == ca_before
    assert again.supernode_keys[0].read_bytes() == key_before
    assert len(again.supernode_keys) == 3
    load(again.server_cert).verify_directly_issued_by(load(again.ca_cert))
    assert server_names(again.server_cert) == ["new.example"]


@pytest.mark.integration
def test_bad_ip_is_a_one_line_error_naming_the_option(tmp_path):
    with pytest.raises(CertError, match="`--ip`"):
        make_certs(tmp_path, ["localhost"], ["300.1.2.3"])
    proc = subprocess.run(
        [sys.executable, "-m", "fedft.cli", "certs", "--out", str(tmp_path), "--ip", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fedft: error: `--ip`: 'nope' is not an IPv4 or IPv6 address"
    ]


def sans_of(path):
    sans = load(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sans.get_values_for_type(x509.DNSName), sans.get_values_for_type(x509.IPAddress)


@pytest.mark.integration
def test_adding_supernodes_keeps_the_server_certificate_and_its_names(tmp_path):
    make_certs(tmp_path, ["fedft.example.org"], ["203.0.113.10"], supernodes=1)
    cert_before, key_before = (tmp_path / "server.pem").read_bytes(), (tmp_path / "server.key")
    key_before = key_before.read_bytes()
    proc = subprocess.run(  # the documented way to add a device: no --host, no --ip
        [sys.executable, "-m", "fedft.cli", "certs", "--out", str(tmp_path), "--supernodes", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert sans_of(tmp_path / "server.pem") == (
        ["fedft.example.org"],
        [ipaddress.ip_address("203.0.113.10")],
    )
    assert (tmp_path / "server.pem").read_bytes() == cert_before
    assert (tmp_path / "server.key").read_bytes() == key_before
    assert (tmp_path / "supernode-2.key").is_file()
    assert "kept, for fedft.example.org, 203.0.113.10" in proc.stdout


def test_a_server_certificate_that_no_longer_fits_is_reissued_for_the_same_names(tmp_path):
    make_certs(tmp_path, ["fedft.example.org"], ["203.0.113.10"])
    (tmp_path / "server.key").unlink()  # lost its key: it cannot serve as is
    again = make_certs(tmp_path)
    assert again.server_status == "re-issued"
    assert sans_of(again.server_cert) == (
        ["fedft.example.org"],
        [ipaddress.ip_address("203.0.113.10")],
    )
    load(again.server_cert).verify_directly_issued_by(load(again.ca_cert))
    fresh = make_certs(tmp_path / "fresh")  # no certificate yet: loopback names
    assert fresh.server_status == "new" and fresh.server_names == ("localhost", "127.0.0.1")


@pytest.mark.integration
def test_new_names_reissue_the_server_certificate_and_say_so(tmp_path):
    make_certs(tmp_path, ["old.example"], [])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedft.cli",
            "certs",
            "--out",
            str(tmp_path),
            "--host",
            "new.example",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert sans_of(tmp_path / "server.pem") == (["new.example"], [])
    assert "RE-ISSUED for new.example (was for old.example)" in proc.stdout


def test_private_keys_are_created_owner_only_never_wider(tmp_path, monkeypatch):
    """Every file is created by os.open with its final mode (0600 for keys), then renamed."""
    import os

    from fedft.deploy import certs as certs_module

    created = []
    real_open = os.open

    def recording_open(path, flags, mode=0o777, *args, **kwargs):
        created.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(certs_module.os, "open", recording_open)
    old_umask = os.umask(0)  # the mode must not come from a friendly umask
    try:
        files = make_certs(tmp_path, ["localhost"], [], supernodes=2)
    finally:
        os.umask(old_umask)
    private = [files.server_key, tmp_path / "ca.key", *files.supernode_keys]
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        made = [c for c in created if os.path.basename(c[0]).startswith(f".{path.name}.")]
        assert len(made) == 1, (path, created)
        _, flags, mode = made[0]
        assert mode == 0o600 and flags & os.O_CREAT and flags & os.O_EXCL, (path, made)
    assert not list(tmp_path.glob(".*.tmp"))  # every temporary file was renamed into place


def test_a_failed_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    from fedft.deploy import certs as certs_module

    target = tmp_path / "server.key"
    certs_module.write_file(target, b"old key", private=True)

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(certs_module.os, "replace", broken_replace)
    with pytest.raises(OSError):
        certs_module.write_file(target, b"new key that never lands", private=True)
    assert target.read_bytes() == b"old key"
    assert [p.name for p in tmp_path.iterdir()] == ["server.key"]  # no temporary file left

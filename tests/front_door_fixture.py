"""The front door's pieces shared by its tests and its benchmark: HAProxy from the unpacked Debian package, a CA
and a server certificate made here, and the role's variables for servers on this machine."""
from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[1]
HAPROXY_DIR = ROOT / ".cache/haproxy"


def haproxy_wrapper(tmp: Path) -> Path:
    """A bin directory whose `haproxy` runs the unpacked package with its libraries (the role calls `haproxy`)."""
    if not (HAPROXY_DIR / "usr/sbin/haproxy").exists():
        raise RuntimeError("HAProxy is not unpacked: run scripts/ensure-haproxy.sh (make test does)")
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    wrapper = bindir / "haproxy"
    wrapper.write_text(f'#!/bin/sh\nLD_LIBRARY_PATH="{HAPROXY_DIR}/usr/lib/x86_64-linux-gnu:{HAPROXY_DIR}/usr/lib" '
                       f'exec "{HAPROXY_DIR}/usr/sbin/haproxy" "$@"\n')
    wrapper.chmod(0o755)
    return bindir


def make_tls(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for 127.0.0.1 and front-door.test: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llm-endpoints test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "front-door.test")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("front-door.test"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


def config_vars(work: Path, https_port: int, http_port: int, servers: list[dict], metrics_port: int = 0) -> dict:
    return {"front_door_backend_group": "front_door_test_servers", "front_door_test_servers": servers,
            "front_door_bind_address": "127.0.0.1", "front_door_https_port": https_port,
            "front_door_http_port": http_port, "front_door_user": "",
            "front_door_metrics_bind_address": "127.0.0.1", "front_door_metrics_port": metrics_port,
            "front_door_config_file": str(work / "haproxy.cfg"), "front_door_certificate_dir": str(work / "certs"),
            "front_door_admin_socket": str(work / "run/admin.sock"),
            "front_door_tls_certificate_file": str(work / "cert.pem"),
            "front_door_tls_private_key_file": str(work / "key.pem"), "front_door_check_interval_s": 1}

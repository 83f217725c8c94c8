"""A real rsyslogd (Debian's package) for the syslog sink's tests: its own config, pid file and
work directory, listening with imtcp on a free loopback port (TLS with gtls and a CA made here
by `cryptography`), writing what it parsed of each message to a file the test reads."""

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.serving import free_port

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
START_DEADLINE = 15.0
# What rsyslog parsed of each message, tab separated: MSGID, STRUCTURED-DATA, MSG.
TEMPLATE = """template(name="fields" type="list") {
  property(name="msgid") constant(value="\\t")
  property(name="structured-data") constant(value="\\t")
  property(name="msg" droplastlf="on") constant(value="\\n")
}"""


@dataclass
class Rsyslog:
    """A running rsyslogd: where it listens and what it wrote."""

    port: int
    output: Path
    ca_file: Path | None
    directory: Path
    tls: bool
    process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def lines(self) -> list[list[str]]:
        """Each message received so far: [msgid, structured data, msg]."""
        if not self.output.exists():
            return []
        return [line.split("\t", 2) for line in self.output.read_text().splitlines()]

    def start(self) -> None:
        """Start rsyslogd on the same port (again, after `stop`) and wait until it listens."""
        pidfile = self.directory / "rsyslogd.pid"
        pidfile.unlink(missing_ok=True)
        with open(self.directory / "rsyslogd.log", "ab") as log:
            self.process = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(self.directory / "rsyslog.conf"), "-i", str(pidfile)],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        log = (self.directory / "rsyslogd.log").read_text()
        pytest.fail(f"rsyslogd did not listen on {self.port}: {log[-2000:]}")

    def stop(self) -> None:
        """SIGTERM, as `systemctl stop` does: rsyslog closes its connections and flushes."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def wait_for(self, count: int, deadline: float = 20.0) -> list[list[str]]:
        """The messages, once there are at least `count` (fails the test past `deadline`)."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            lines = self.lines()
            if len(lines) >= count:
                return lines
            time.sleep(0.05)
        pytest.fail(f"rsyslog received {len(self.lines())} messages, not {count}")


@contextmanager
def rsyslog(directory: Path, tls: bool = False) -> Iterator[Rsyslog]:
    """An rsyslogd for the duration of the block (stopped after it, whatever happens)."""
    if not os.access(RSYSLOGD, os.X_OK):
        pytest.fail("rsyslogd is not installed (apt-get install rsyslog rsyslog-gnutls)")
    directory.mkdir(parents=True, exist_ok=True)
    server = Rsyslog(free_port(), directory / "received.tsv", None, directory, tls)
    driver = ""
    if tls:
        server.ca_file = make_certificates(directory)
        driver = (
            f'global(DefaultNetstreamDriver="gtls"'
            f' DefaultNetstreamDriverCAFile="{directory / "ca.pem"}"'
            f' DefaultNetstreamDriverCertFile="{directory / "cert.pem"}"'
            f' DefaultNetstreamDriverKeyFile="{directory / "key.pem"}")\n'
        )
    modes = ' StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon"'
    (directory / "rsyslog.conf").write_text(
        f'global(workDirectory="{directory}" maxMessageSize="256k")\n'
        f"{driver}"
        f'module(load="imtcp"{modes if tls else ""})\n'
        f'input(type="imtcp" address="127.0.0.1" port="{server.port}")\n'
        f"{TEMPLATE}\n"
        f'action(type="omfile" file="{server.output}" template="fields")\n'
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_certificates(directory: Path) -> Path:
    """A throwaway CA and a certificate for 127.0.0.1 and localhost signed by it; the CA's
    file (ca.pem; cert.pem and key.pem are the server's)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "audit test CA")])
    ca = (
        _builder(ca_name, ca_name, ca_key, now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    certificate = (
        _builder(server_name, ca_name, key, now)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "cert.pem").write_bytes(certificate.public_bytes(pem))
    (directory / "key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return directory / "ca.pem"


def _builder(subject, issuer, key, now) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )

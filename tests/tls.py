"""TLS in front of the test broker: a throw-away CA made with openssl, and stunnel4 on loopback
terminating TLS (optionally requiring a client certificate) and forwarding to Tansu.

The broker must advertise the terminator's port (LocalBroker(advertised_port=…)), or clients
would reconnect to the plain port after bootstrapping. Certificates name 127.0.0.1 and
localhost, so hostname checking stays on.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

KEY_PASSWORD = "client-key-passphrase"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path  # encrypted with KEY_PASSWORD
    other_ca: Path  # a CA that signed nothing here: trusting only it must fail


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(folder: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (its key
    encrypted), all signed by that CA; plus an unrelated CA."""
    if not shutil.which("openssl"):
        raise RuntimeError("openssl not found: `make tools` installs it")
    folder.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                 "-days", "2", "-subj", f"/CN=aedr test {ca}", cwd=folder)
    (folder / "server.ext").write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    (folder / "client.ext").write_text("extendedKeyUsage = clientAuth\n")
    for name, extra in (("server", []), ("client", ["-passout", f"pass:{KEY_PASSWORD}"])):
        _openssl("req", "-newkey", "rsa:2048", *(extra or ["-nodes"]), "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", f"/CN=aedr test {name}", cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)
    return Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "client.pem",
               folder / "client.key", folder / "other-ca.pem")


class Stunnel:
    """stunnel4 accepting TLS on `port` and forwarding to `target_port` (plain), on loopback."""

    def __init__(self, pki: Pki, port: int, target_port: int, folder: Path, require_client_cert: bool = False):
        self.port = port
        binary = shutil.which("stunnel4") or shutil.which("stunnel")
        if not binary:
            raise RuntimeError("stunnel4 not found: `make tools` installs it")
        verify = f"CAfile = {pki.ca}\nverifyChain = yes\nrequireCert = yes\n" if require_client_cert else ""
        config = folder / f"stunnel-{port}.conf"
        config.write_text(
            f"foreground = yes\npid =\ndebug = 4\n[kafka]\naccept = 127.0.0.1:{port}\n"
            f"connect = 127.0.0.1:{target_port}\ncert = {pki.server_cert}\nkey = {pki.server_key}\n{verify}")
        self.log = folder / f"stunnel-{port}.log"
        self._process = subprocess.Popen([binary, str(config)], stdout=open(self.log, "wb"),
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"stunnel exited: {self.log.read_text()[-1000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("stunnel did not open its port")

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

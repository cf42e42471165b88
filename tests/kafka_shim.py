"""A loopback Kafka-protocol proxy that lets Debian's kcat (librdkafka 2.0.2) talk to Tansu,
and, given users, a SASL gateway in front of it.

Tansu 0.6.0 answers ApiVersions v3 with four optional tagged fields at the end of the body
(SupportedFeatures, FinalizedFeaturesEpoch, FinalizedFeatures, ZkMigrationReady). librdkafka
2.0.2 fails on them with `ApiVersionRequest failed: Local: Read underflow` (INFRA.md). Tagged
fields are optional by definition, so this proxy drops that section (it writes "no tagged
fields") and passes every other byte through unchanged, both ways.

With `users`, the proxy authenticates every connection itself (SASL PLAIN, SCRAM-SHA-256 and
SCRAM-SHA-512, RFC 5802, as a Kafka broker does) before passing anything but ApiVersions on:
Tansu 0.6.0 can require authentication, but its users can only be created through an
authenticated connection, so a broker of ours cannot be given any. A wrong password gets Kafka's
SASL_AUTHENTICATION_FAILED (58), as from a real broker.

Clients reach the broker again at the address it advertises in its metadata, so start the
broker with `advertised_port` = this proxy's port (worker.kafka_io.LocalBroker), or kcat would
bypass the proxy after bootstrapping.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import struct
import threading
from collections import Counter

from tests.integration.proxy import listen

API_VERSIONS = 18
PRODUCE = 0
SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36
SASL_AUTHENTICATION_FAILED = 58
UNSUPPORTED_SASL_MECHANISM = 33
CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


def strip_api_versions_tags(body: bytes, sasl_v1: bool = False) -> bytes:
    """An ApiVersions v3+ response body (after the correlation id) without its top-level tagged
    fields. Layout: error_code int16, api_keys compact array of (key, min, max int16 + an empty
    tag buffer), throttle_time_ms int32, tagged fields. With `sasl_v1`, SaslAuthenticate is
    offered up to v1 only (the gateway answers the plain, non-flexible encoding)."""
    out = bytearray(body)
    i = 2
    length, i = _uvarint(body, i)
    for _ in range(max(length - 1, 0)):
        key, _low, high = struct.unpack(">hhh", body[i:i + 6])
        if sasl_v1 and key == SASL_AUTHENTICATE and high > 1:
            out[i + 4:i + 6] = struct.pack(">h", 1)
        i += 6
        tags, i = _uvarint(body, i)
        if tags:  # a per-key tag: not seen from Tansu; leave the response alone
            return body
    i += 4  # throttle_time_ms
    return bytes(out[:i]) + b"\x00"


def produce_codecs(frame: bytes) -> list[str]:
    """The compression codec of each record batch in a Produce request (v3–v8, the versions
    librdkafka 2.0 and kafka-python use; [] for others)."""
    key, version = struct.unpack(">hh", frame[:4])
    if key != PRODUCE or not 3 <= version <= 8:
        return []
    (client_id,) = struct.unpack(">h", frame[8:10])
    i = 10 + max(client_id, 0)
    (txn,) = struct.unpack(">h", frame[i:i + 2])
    i += 2 + max(txn, 0) + 2 + 4  # transactional id, acks, timeout
    codecs: list[str] = []
    (topics,) = struct.unpack(">i", frame[i:i + 4])
    i += 4
    for _ in range(topics):
        (name,) = struct.unpack(">h", frame[i:i + 2])
        i += 2 + name
        (partitions,) = struct.unpack(">i", frame[i:i + 4])
        i += 4
        for _ in range(partitions):
            (size,) = struct.unpack(">i", frame[i + 4:i + 8])
            records, i = frame[i + 8:i + 8 + max(size, 0)], i + 8 + max(size, 0)
            j = 0
            while j + 23 <= len(records):  # base offset, length, epoch, magic, crc, attributes
                (length,) = struct.unpack(">i", records[j + 8:j + 12])
                (attributes,) = struct.unpack(">h", records[j + 21:j + 23])
                codecs.append(CODECS.get(attributes & 7, "?"))
                j += 12 + length
    return codecs


class _Scram:
    """The server side of one SCRAM exchange (RFC 5802)."""

    def __init__(self, digest: str, users: dict[str, str]):
        self.digest, self.users = digest, users
        self.salt, self.iterations = os.urandom(16), 4096
        self.first_bare = self.server_first = ""
        self.password: str | None = None

    def first(self, message: str) -> bytes:
        self.first_bare = message.split(",", 2)[2]
        fields = dict(f.split("=", 1) for f in self.first_bare.split(","))
        self.password = self.users.get(fields["n"])
        nonce = fields["r"] + base64.b64encode(os.urandom(18)).decode()
        self.server_first = f"r={nonce},s={base64.b64encode(self.salt).decode()},i={self.iterations}"
        return self.server_first.encode()

    def final(self, message: str) -> bytes | None:
        """The server's final message, or None when the proof is wrong (or the user unknown)."""
        without_proof, _, proof = message.rpartition(",p=")
        salted = hashlib.pbkdf2_hmac(self.digest, (self.password or "").encode(), self.salt, self.iterations)
        auth = f"{self.first_bare},{self.server_first},{without_proof}".encode()
        client_key = hmac.new(salted, b"Client Key", self.digest).digest()
        signature = hmac.new(hashlib.new(self.digest, client_key).digest(), auth, self.digest).digest()
        expected = bytes(a ^ b for a, b in zip(client_key, signature))
        if self.password is None or not hmac.compare_digest(base64.b64decode(proof), expected):
            return None
        server_key = hmac.new(salted, b"Server Key", self.digest).digest()
        return b"v=" + base64.b64encode(hmac.new(server_key, auth, self.digest).digest())


def _uvarint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


class KafkaShim:
    """Listens on loopback and forwards to `target` (host, port), fixing ApiVersions answers;
    with `users` (name -> password), a SASL gateway. `codecs` counts the compression codec of
    every record batch produced through it."""

    def __init__(self, target: tuple[str, int], port: int = 0, users: dict[str, str] | None = None):
        self.target = target
        self.port = port
        self.users = users
        self.rewritten = 0
        self.codecs: Counter = Counter()
        self.refused = 0  # failed authentications
        self._listener: socket.socket | None = None

    def start(self) -> "KafkaShim":
        listener = listen(self.port)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None

    def _accept(self) -> None:
        while self._listener is not None:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            versions: dict[int, int] = {}  # correlation id -> ApiVersions request version
            lock = threading.Lock()  # both threads write to the client
            threading.Thread(target=self._requests, args=(client, upstream, versions, lock), daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, client, versions, lock), daemon=True).start()

    def _requests(self, src: socket.socket, dst: socket.socket, versions: dict[int, int], lock) -> None:
        authenticated = self.users is None
        mechanism, scram = "", None
        for frame in _frames(src, dst):
            key, version, correlation = struct.unpack(">hhi", frame[:8])
            if key == API_VERSIONS:
                versions[correlation] = version
            elif not authenticated:
                body = frame[10 + max(struct.unpack(">h", frame[8:10])[0], 0):]
                if key == SASL_HANDSHAKE:
                    mechanism = body[2:2 + struct.unpack(">h", body[:2])[0]].decode()
                    known = mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
                    mechanisms = [b"PLAIN", b"SCRAM-SHA-256", b"SCRAM-SHA-512"]
                    answer = struct.pack(">hi", 0 if known else UNSUPPORTED_SASL_MECHANISM, len(mechanisms))
                    answer += b"".join(struct.pack(">h", len(m)) + m for m in mechanisms)
                    _reply(src, lock, correlation, answer)
                    if mechanism.startswith("SCRAM-"):
                        scram = _Scram(mechanism.removeprefix("SCRAM-").replace("-", "").lower(), self.users or {})
                    continue
                if key == SASL_AUTHENTICATE and version <= 1:
                    token = body[4:4 + struct.unpack(">i", body[:4])[0]]
                    reply, done = self._authenticate(mechanism, scram, token)
                    if reply is None:
                        self.refused += 1
                        message = b"Authentication failed: invalid credentials"
                        _reply(src, lock, correlation, struct.pack(">hh", SASL_AUTHENTICATION_FAILED, len(message))
                               + message + struct.pack(">iq", 0, 0))
                        continue
                    authenticated = done
                    _reply(src, lock, correlation, struct.pack(">hhi", 0, -1, len(reply)) + reply
                           + struct.pack(">q", 0))
                    continue
                return  # anything else before authenticating: a broker closes the connection
            self.codecs.update(produce_codecs(frame))
            dst.sendall(struct.pack(">i", len(frame)) + frame)

    def _authenticate(self, mechanism: str, scram: _Scram | None, token: bytes) -> tuple[bytes | None, bool]:
        """(the reply, whether authentication is complete); (None, False) when refused."""
        if mechanism == "PLAIN":
            _, user, password = token.decode().split("\x00")
            ok = self.users is not None and user in self.users and hmac.compare_digest(self.users[user], password)
            return (b"", True) if ok else (None, False)
        if scram is not None and not scram.first_bare:
            return scram.first(token.decode()), False
        if scram is not None:
            final = scram.final(token.decode())
            return (final, True) if final is not None else (None, False)
        return None, False

    def _responses(self, src: socket.socket, dst: socket.socket, versions: dict[int, int], lock) -> None:
        for frame in _frames(src, dst):
            (correlation,) = struct.unpack(">i", frame[:4])
            if versions.pop(correlation, 0) >= 3:  # ApiVersions answers with header v0 at any version
                fixed = frame[:4] + strip_api_versions_tags(frame[4:], sasl_v1=self.users is not None)
                self.rewritten += fixed != frame
                frame = fixed
            with lock:
                dst.sendall(struct.pack(">i", len(frame)) + frame)


def _reply(sock: socket.socket, lock, correlation: int, body: bytes) -> None:
    with lock:
        sock.sendall(struct.pack(">ii", len(body) + 4, correlation) + body)


def _frames(src: socket.socket, dst: socket.socket):
    """Length-prefixed Kafka frames read from `src` until either side closes."""
    buffer = b""
    try:
        while True:
            while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack(">i", buffer[:4])[0]:
                size = struct.unpack(">i", buffer[:4])[0]
                yield buffer[4:4 + size]
                buffer = buffer[4 + size:]
            data = src.recv(1 << 20)
            if not data:
                return
            buffer += data
    except OSError:
        return
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

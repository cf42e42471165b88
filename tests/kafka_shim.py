"""A loopback Kafka-protocol proxy that lets Debian's kcat (librdkafka 2.0.2) talk to Tansu.

Tansu 0.6.0 answers ApiVersions v3 with four optional tagged fields at the end of the body
(SupportedFeatures, FinalizedFeaturesEpoch, FinalizedFeatures, ZkMigrationReady). librdkafka
2.0.2 fails on them with `ApiVersionRequest failed: Local: Read underflow` (INFRA.md). Tagged
fields are optional by definition, so this proxy drops that section (it writes "no tagged
fields") and passes every other byte through unchanged, both ways.

Clients reach the broker again at the address it advertises in its metadata, so start the
broker with `advertised_port` = this proxy's port (worker.kafka_io.LocalBroker), or kcat would
bypass the proxy after bootstrapping.
"""

from __future__ import annotations

import socket
import struct
import threading

API_VERSIONS = 18


def strip_api_versions_tags(body: bytes) -> bytes:
    """An ApiVersions v3+ response body (after the correlation id) without its top-level tagged
    fields. Layout: error_code int16, api_keys compact array of (key, min, max int16 + an empty
    tag buffer), throttle_time_ms int32, tagged fields."""
    i = 2
    length, i = _uvarint(body, i)
    for _ in range(max(length - 1, 0)):
        i += 6
        tags, i = _uvarint(body, i)
        if tags:  # a per-key tag: not seen from Tansu; leave the response alone
            return body
    i += 4  # throttle_time_ms
    return body[:i] + b"\x00"


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
    """Listens on loopback and forwards to `target` (host, port), fixing ApiVersions answers."""

    def __init__(self, target: tuple[str, int], port: int = 0):
        self.target = target
        self.port = port
        self.rewritten = 0
        self._listener: socket.socket | None = None

    def start(self) -> "KafkaShim":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
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
            threading.Thread(target=self._requests, args=(client, upstream, versions), daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, client, versions), daemon=True).start()

    def _requests(self, src: socket.socket, dst: socket.socket, versions: dict[int, int]) -> None:
        for frame in _frames(src, dst):
            key, version, correlation = struct.unpack(">hhi", frame[:8])
            if key == API_VERSIONS:
                versions[correlation] = version
            dst.sendall(struct.pack(">i", len(frame)) + frame)

    def _responses(self, src: socket.socket, dst: socket.socket, versions: dict[int, int]) -> None:
        for frame in _frames(src, dst):
            (correlation,) = struct.unpack(">i", frame[:4])
            if versions.pop(correlation, 0) >= 3:  # ApiVersions answers with header v0 at any version
                fixed = frame[:4] + strip_api_versions_tags(frame[4:])
                self.rewritten += fixed != frame
                frame = fixed
            dst.sendall(struct.pack(">i", len(frame)) + frame)


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

"""URL fetching against a real HTTP server on loopback: allowlists, redirects, limits."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from worker.config import FetchSettings
from worker.events import InvalidEvent
from tests.servers import RawServer
from worker.fetch import Fetcher

BODY = b"\x89PNG fake image bytes" * 10


class Handler(BaseHTTPRequestHandler):
    def handle(self):
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):  # the fetcher hung up on purpose
            pass

    def do_GET(self):  # noqa: N802
        if self.path == "/image.png":
            self._send(200, BODY)
        elif self.path == "/redirect-ok":
            self._redirect(f"http://127.0.0.1:{self.server.server_address[1]}/image.png")
        elif self.path == "/redirect-away":
            self._redirect("http://localhost.invalid/image.png")
        elif self.path == "/redirect-loop":
            self._redirect("/redirect-loop")
        elif self.path == "/huge-no-length":
            self.send_response(200)
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"x" * 10_000)
        elif self.path == "/huge-declared":
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
        elif self.path == "/slow":
            self.send_response(200)
            self.end_headers()
            for _ in range(50):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        else:
            self._send(404, b"no")

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location):
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def fetcher(**kw) -> Fetcher:
    settings = {"allowed_schemes": ("http",), "allowed_hosts": ("127.0.0.1",), "allow_private_addresses": True,
                "timeout_s": 2.0, **kw}
    return Fetcher(FetchSettings(**settings), max_bytes=100_000)


def reason_of(f: Fetcher, url: str) -> str:
    with pytest.raises(InvalidEvent) as info:
        f.fetch(url)
    return info.value.reason


def test_allowed_fetch_and_followed_redirect(server):
    assert fetcher().fetch(f"{server}/image.png") == BODY
    assert fetcher().fetch(f"{server}/redirect-ok") == BODY


def test_default_settings_fetch_nothing(server):
    assert reason_of(Fetcher(FetchSettings(), 100_000), f"{server}/image.png") == "fetch"


def test_host_not_allowed_and_private_address_refused(server):
    assert reason_of(fetcher(allowed_hosts=("example.org",)), f"{server}/image.png") == "fetch"
    assert reason_of(fetcher(allow_private_addresses=False), f"{server}/image.png") == "fetch"
    metadata = fetcher(allowed_hosts=("169.254.169.254",), allow_private_addresses=False)
    assert reason_of(metadata, "http://169.254.169.254/latest/meta-data/") == "fetch"


def test_redirects_are_checked_and_bounded(server):
    assert reason_of(fetcher(), f"{server}/redirect-away") == "fetch"
    assert reason_of(fetcher(), f"{server}/redirect-loop") == "fetch"


def test_size_and_time_limits_apply_while_streaming(server):
    assert reason_of(fetcher(), f"{server}/huge-no-length") == "too_large"
    assert reason_of(fetcher(), f"{server}/huge-declared") == "too_large"
    started = time.monotonic()
    assert reason_of(fetcher(timeout_s=0.5), f"{server}/slow") == "fetch"
    assert time.monotonic() - started < 2.0


def test_file_urls_only_under_the_root(tmp_path):
    root = tmp_path / "uploads"
    root.mkdir()
    (root / "a.png").write_bytes(BODY)
    (tmp_path / "secret.txt").write_text("no")
    f = Fetcher(FetchSettings(allowed_schemes=("file",), file_root=str(root)), 100_000)
    assert f.fetch((root / "a.png").as_uri()) == BODY
    assert reason_of(f, (tmp_path / "secret.txt").as_uri()) == "fetch"
    assert reason_of(f, f"file://{root}/../secret.txt") == "fetch"
    assert reason_of(Fetcher(FetchSettings(allowed_schemes=("file",)), 100_000), (root / "a.png").as_uri()) == "fetch"


@pytest.mark.parametrize("name, script", [
    ("slow status line and headers", [(bytes([b]), 0.3) for b in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 200]),
    ("slow chunk-size line", [(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 0.0)]
     + [(b"1", 0.3)] * 200),
])
def test_the_deadline_covers_headers_and_chunks_not_only_the_body(name, script):
    server = RawServer(script)
    try:
        started = time.monotonic()
        with pytest.raises(InvalidEvent) as info:
            fetcher(timeout_s=1.0).fetch(f"http://127.0.0.1:{server.port}/x.png")
        assert info.value.reason == "fetch" and "longer than 1.0 s" in str(info.value)
        assert time.monotonic() - started < 2.0
    finally:
        server.close()


def test_a_bare_image_instead_of_http_is_a_fetch_error():
    server = RawServer([(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x00" + b"\x00" * 64, 0.0)])
    try:
        with pytest.raises(InvalidEvent) as info:
            fetcher().fetch(f"http://127.0.0.1:{server.port}/x.jpg")
        assert info.value.reason == "fetch"
    finally:
        server.close()


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:99999/x.png", "http://127.0.0.1:port/x.png", "http://[::1", "http://127.0.0.1:8/\x00.png",
])
def test_malformed_urls_are_fetch_errors(url):
    assert reason_of(fetcher(), url) == "fetch"


def test_file_urls_read_only_regular_files_without_blocking(tmp_path):
    import os

    root = tmp_path / "uploads"
    root.mkdir()
    os.mkfifo(root / "fifo.png")  # opening a FIFO for reading would block until a writer comes
    (root / "loop-a").symlink_to(root / "loop-b")
    (root / "loop-b").symlink_to(root / "loop-a")
    (root / "zero.png").symlink_to("/dev/zero")
    (root / "non-ascii é.png").write_bytes(BODY)
    f = Fetcher(FetchSettings(allowed_schemes=("file",), file_root=str(root), timeout_s=1.0), 100_000)
    started = time.monotonic()
    assert reason_of(f, (root / "fifo.png").as_uri()) == "fetch"
    assert reason_of(f, (root / "loop-a").as_uri()) == "fetch"
    assert reason_of(f, (root / "zero.png").as_uri()) == "fetch"  # resolves outside the root
    assert reason_of(f, f"file://{root}/a\x00.png") == "fetch"
    assert reason_of(f, f"file://{root}") == "fetch"  # a directory
    assert time.monotonic() - started < 1.0
    assert f.fetch((root / "non-ascii é.png").as_uri()) == BODY

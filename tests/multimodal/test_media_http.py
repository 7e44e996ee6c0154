"""Fetching media over HTTP against a local server: the SSRF guard, redirects, size and time limits.

The server listens on 127.0.0.1, which the guard refuses by default; tests that need a "public" host map
the name public.test to 127.0.0.1 and let the address check pass 127.0.0.1 only (other addresses keep their
real classification).
"""

from __future__ import annotations

import ipaddress
import shutil
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from qwen35.multimodal import http_get
from qwen35.multimodal.inputs import MediaError
from qwen35.multimodal.media import MediaPolicy, fetch

BODY = b"\x89PNG fake image bytes"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def send(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path, port = self.path, self.server.server_address[1]
        try:
            if path == "/image.png":
                self.send(200, BODY, Content_Type="image/png")
            elif path == "/host":
                self.send(200, self.headers["Host"].encode())
            elif path.startswith("/hops/"):  # /hops/N redirects N times, then serves the image
                n = int(path.rsplit("/", 1)[1])
                self.send(302, Location=f"/hops/{n - 1}") if n else self.send(200, BODY)
            elif path == "/to-private":
                self.send(302, Location=f"http://127.0.0.2:{port}/image.png")
            elif path == "/to-file":
                self.send(302, Location="file:///etc/passwd")
            elif path == "/missing":
                self.send(404, b"no")
            elif path == "/declared-big":
                self.send_response(200)
                self.send_header("Content-Length", "10000000")
                self.end_headers()
                self.wfile.write(b"x" * 1000)
            elif path == "/chunked-big":  # no Content-Length: the size shows only while reading
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for _ in range(40):
                    self.wfile.write(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            elif path == "/stall":  # headers, then nothing
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                self.wfile.flush()
                time.sleep(2)
            elif path == "/drip":  # a byte at a time, each well inside any read timeout
                self.send_response(200)
                self.send_header("Content-Length", "40")
                self.end_headers()
                for _ in range(40):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
            else:
                self.send(404)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should


class Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """Quiet about clients that hang up or refuse the certificate (the tests make them); loud otherwise."""
        if not isinstance(sys.exc_info()[1], OSError):  # ssl.SSLError and ConnectionResetError are OSErrors
            super().handle_error(request, client_address)


def serve(tls: ssl.SSLContext | None = None):
    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def port():
    server = serve()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def tls_port(tmp_path_factory):
    """An HTTPS server whose self-signed certificate names public.test only: (port, the certificate file)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", d / "key.pem", "-out", d / "cert.pem", "-days", "1", "-subj", "/CN=public.test",
                    "-addext", "subjectAltName=DNS:public.test"], check=True, capture_output=True)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(d / "cert.pem", d / "key.pem")
    server = serve(tls)
    yield server.server_address[1], d / "cert.pem"
    server.shutdown()
    server.server_close()


@pytest.fixture
def public(monkeypatch):
    """public.test and other.test resolve to 127.0.0.1, and 127.0.0.1 counts as public; returns the lookups."""
    lookups: list[str] = []
    real_resolve, real_reason = http_get.resolve, http_get.non_public_reason

    def resolve(host, port, timeout_s):
        lookups.append(host)
        if host in ("public.test", "other.test"):
            return [ipaddress.ip_address("127.0.0.1")]
        return real_resolve(host, port, timeout_s)

    monkeypatch.setattr(http_get, "resolve", resolve)
    monkeypatch.setattr(http_get, "non_public_reason",
                        lambda ip: None if str(ip) == "127.0.0.1" else real_reason(ip))
    return lookups


PRIVATE = MediaPolicy(allow_private_urls=True)


def test_loopback_is_refused_by_default(port):
    with pytest.raises(MediaError, match=r"image http://127.0.0.1:\d+/image.png: resolves to a loopback address "
                                         r"\(127.0.0.1\); refused \(start the server with --allow-private-media-urls"):
        fetch(f"http://127.0.0.1:{port}/image.png", MediaPolicy())
    with pytest.raises(MediaError, match="loopback"):
        fetch(f"http://localhost:{port}/image.png", MediaPolicy(), "video")


def test_loopback_is_fetched_when_allowed(port):
    assert fetch(f"http://127.0.0.1:{port}/image.png", PRIVATE) == BODY
    with pytest.raises(MediaError, match="answered 404 Not Found"):
        fetch(f"http://127.0.0.1:{port}/missing", PRIVATE)


def test_connection_goes_to_the_checked_address_with_the_name_as_host(port, public):
    assert fetch(f"http://public.test:{port}/host", MediaPolicy()) == f"public.test:{port}".encode()
    assert public == ["public.test"]  # one lookup: no second one a rebinding DNS could answer differently


def test_https_to_the_checked_address_verifies_the_name(tls_port, public, monkeypatch):
    port, cert = tls_port
    trust = ssl.create_default_context(cafile=str(cert))  # the test's certificate, as if a public CA signed it
    init = httpx.Client.__init__
    monkeypatch.setattr(httpx.Client, "__init__", lambda self, **kw: init(self, verify=trust, **kw))
    # connected to 127.0.0.1, yet the TLS server name and the certificate check are public.test's
    assert fetch(f"https://public.test:{port}/image.png", MediaPolicy()) == BODY
    with pytest.raises(MediaError, match="cannot connect .*[Hh]ostname mismatch"):
        fetch(f"https://other.test:{port}/image.png", MediaPolicy())  # same address, a name the cert lacks


def test_any_private_address_refuses_the_host(monkeypatch):
    addresses = [ipaddress.ip_address(a) for a in ("93.184.215.14", "10.0.0.5")]
    monkeypatch.setattr(http_get, "resolve", lambda host, port, timeout_s: addresses)
    with pytest.raises(MediaError, match=r"resolves to a private address \(10.0.0.5\)"):
        fetch("http://mixed.test/a.png", MediaPolicy())


def test_redirect_to_a_private_address_is_refused(port, public):
    with pytest.raises(MediaError, match=r"image http://127.0.0.2:\d+/image.png: resolves to a loopback"):
        fetch(f"http://public.test:{port}/to-private", MediaPolicy())
    with pytest.raises(MediaError, match="file scheme: only http and https"):
        fetch(f"http://public.test:{port}/to-file", MediaPolicy())


def test_redirects_are_followed_up_to_the_limit(port, public):
    assert fetch(f"http://public.test:{port}/hops/3", MediaPolicy()) == BODY
    with pytest.raises(MediaError, match="more than 3 redirects"):
        fetch(f"http://public.test:{port}/hops/4", MediaPolicy())
    with pytest.raises(MediaError, match="more than 0 redirects"):
        fetch(f"http://public.test:{port}/hops/1", MediaPolicy(max_redirects=0))


def test_allowed_media_domains(port, public):
    only = MediaPolicy(allowed_media_domains=("upload.wikimedia.org",))
    with pytest.raises(MediaError, match=r"public.test is not one of the allowed media domains "
                                         r"\(upload.wikimedia.org; --allowed-media-domains\)"):
        fetch(f"http://public.test:{port}/image.png", only)
    assert fetch(f"http://public.test:{port}/image.png", MediaPolicy(allowed_media_domains=("Public.Test",))) == BODY


def test_size_limit_from_content_length(port):
    with pytest.raises(MediaError, match=r"is 10,000,000 bytes \(Content-Length\), over the limit of 100,000"):
        fetch(f"http://127.0.0.1:{port}/declared-big", MediaPolicy(allow_private_urls=True, max_image_bytes=100_000))


def test_size_limit_while_streaming(port):
    start = time.monotonic()
    with pytest.raises(MediaError, match="is larger than the limit of 100,000 bytes"):
        fetch(f"http://127.0.0.1:{port}/chunked-big", MediaPolicy(allow_private_urls=True, max_image_bytes=100_000))
    assert time.monotonic() - start < 2
    assert len(fetch(f"http://127.0.0.1:{port}/chunked-big", PRIVATE)) == 40 * 0x10000


@pytest.mark.parametrize("path", ["/stall", "/drip"])
def test_total_time_limit(port, path):
    start = time.monotonic()
    with pytest.raises(MediaError, match="took longer than the 0.5 s fetch limit"):
        fetch(f"http://127.0.0.1:{port}{path}", MediaPolicy(allow_private_urls=True, image_timeout_s=0.5))
    assert time.monotonic() - start < 1.5


def test_unreachable_and_unresolvable(monkeypatch):
    with pytest.raises(MediaError, match="cannot connect"):
        fetch("http://127.0.0.1:9/x.png", PRIVATE)  # discard port: nothing listens
    with pytest.raises(MediaError, match="nothing.invalid cannot be resolved"):
        fetch("http://nothing.invalid/x.png", MediaPolicy())
    with pytest.raises(MediaError, match="not a valid URL"):
        fetch("http://[::1/x.png", MediaPolicy())
    with pytest.raises(MediaError, match="not a valid URL"):
        fetch("http://xn--zz.com/x.png", MediaPolicy())  # an invalid IDNA label
    with pytest.raises(MediaError, match="cannot be resolved"):
        fetch(f"http://{'a' * 70}.com/x.png", MediaPolicy())  # a label longer than DNS allows


@pytest.mark.parametrize("url", ["http://0x7f.1/x.png", "http://2130706433/x.png", "http://[::ffff:127.0.0.1]/"])
def test_odd_spellings_of_loopback_are_refused(url):
    with pytest.raises(MediaError, match="resolves to a loopback address"):
        fetch(url, MediaPolicy())


@pytest.mark.parametrize("address,reason", [
    ("127.0.0.1", "a loopback"), ("::1", "a loopback"), ("::ffff:127.0.0.1", "a loopback"),
    ("10.1.2.3", "a private"), ("172.16.0.1", "a private"), ("192.168.1.1", "a private"), ("fc00::1", "a private"),
    ("::ffff:192.168.1.1", "a private"), ("64:ff9b::a00:1", "a private"), ("2002:a00:1::1", "a private"),
    ("169.254.169.254", "a link-local"), ("fe80::1", "a link-local"), ("0.0.0.0", "an unspecified"),
    ("::", "an unspecified"), ("224.0.0.1", "a multicast"), ("ff02::1", "a multicast"),
    ("240.0.0.1", "a private"), ("fec0::1", "a site-local"), ("100.64.0.1", "a non-public"),
    ("64:ff9b:1::1", "a reserved"),
    ("8.8.8.8", None), ("2606:4700::1111", None), ("::ffff:8.8.8.8", None), ("64:ff9b::808:808", None),
])
def test_address_classes(address, reason):
    got = http_get.non_public_reason(ipaddress.ip_address(address))
    assert got == (None if reason is None else f"{reason} address")

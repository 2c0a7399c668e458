"""
Result downloads on the network as it is: through the connection's proxy, and against a DNS answer
that changes between the check and the connection (rebinding).
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from airflow_provider_qwen.exceptions import ApikleyURLRefusedError
from airflow_provider_qwen.hooks.apikley import ApikleyHook
from tests.conftest import submit_edit


class ForwardProxy(http.server.ThreadingHTTPServer):
    """A plain HTTP forward proxy on loopback that remembers each URL it was asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        super().__init__(("127.0.0.1", 0), ProxyHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.asked.append(self.path)  # absolute-form: the URL the client wants
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with direct.open(self.path, timeout=10) as upstream:
            body = upstream.read()
            self.send_response(upstream.status)
            self.send_header("Content-Type", upstream.headers.get("Content-Type", "application/octet-stream"))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    server = ForwardProxy()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def with_extra(monkeypatch: pytest.MonkeyPatch, **extra: object) -> None:
    """``apikley_default`` as the emulator fixture set it, with more extras."""
    import os

    conn = json.loads(os.environ["AIRFLOW_CONN_APIKLEY_DEFAULT"])
    conn["extra"] = {**conn.get("extra", {}), **extra}
    monkeypatch.setenv("AIRFLOW_CONN_APIKLEY_DEFAULT", json.dumps(conn))


def test_results_are_downloaded_through_the_connections_proxy(apikley, source_image_url, proxy, tmp_path, monkeypatch):
    task = apikley.wait_until_ended(submit_edit(source_image_url))
    (url,) = task.result_urls
    with_extra(monkeypatch, proxies={"http": proxy.url})  # this proxy only forwards GETs
    stored = ApikleyHook().download_result(url, f"file://{tmp_path}/result.png")
    assert proxy.asked == [url]
    assert (tmp_path / "result.png").stat().st_size == stored.size > 0


def test_through_a_proxy_the_url_the_proxy_is_asked_for_is_still_checked(apikley, proxy, tmp_path, monkeypatch):
    with_extra(monkeypatch, proxies={"http": proxy.url})
    with pytest.raises(ApikleyURLRefusedError, match="link-local, metadata or unroutable"):
        ApikleyHook().download_result("http://169.254.169.254/latest/meta-data/x.png", f"file://{tmp_path}/x.png")
    assert proxy.asked == [] and list(tmp_path.iterdir()) == []


def test_a_download_connects_to_the_address_that_was_checked_not_to_a_second_dns_answer(
    apikley, source_image_url, tmp_path, monkeypatch
):
    task = apikley.wait_until_ended(submit_edit(source_image_url))
    (url,) = task.result_urls
    parts = urlsplit(url)
    rebinding = url.replace(parts.hostname, "results.rebind.test", 1)
    # the first answer is the emulator's address (checked and allowed); any later one an address that
    # was never checked, where nothing listens
    lookups: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host == "results.rebind.test":
            lookups.append(host)
            address = "127.0.0.1" if len(lookups) == 1 else "127.0.0.2"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port or 0))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    stored = ApikleyHook().download_result(rebinding, f"file://{tmp_path}/result.png")
    assert lookups == ["results.rebind.test"]  # resolved once, for the check
    assert (tmp_path / "result.png").stat().st_size == stored.size > 0
    (seen,) = [request for request in apikley.seen("results")]
    assert seen.headers["host"] == f"results.rebind.test:{parts.port}"  # the name, not the address


def test_downloads_use_the_connections_verify_and_nothing_from_the_environment(apikley, monkeypatch, tmp_path):
    bundle = tmp_path / "corporate-ca.pem"
    bundle.write_text("")
    with_extra(monkeypatch, verify=str(bundle), proxies={"https": "http://proxy.internal.test:3128"})
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/elsewhere/ca.pem")
    monkeypatch.setenv("HTTPS_PROXY", "http://environment-proxy.test:8080")
    session = ApikleyHook().download_session
    assert session.verify == str(bundle)
    assert session.proxies == {"https": "http://proxy.internal.test:3128"} and session.trust_env is False
    assert "Authorization" not in session.headers


def self_signed(folder, host: str) -> tuple[str, str]:
    """A certificate for ``host`` and its key, as PEM files in ``folder``: (certificate, key)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


def test_an_https_download_is_pinned_and_still_verified_against_the_hosts_name(apikley, tmp_path, monkeypatch):
    import ssl

    from tests.emulator.conftest import png

    host = "results.pinned.test"
    cert, key = self_signed(tmp_path, host)
    files = tmp_path / "files"
    files.mkdir()
    (files / "0.png").write_bytes(png())
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(files))
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    lookups: list[str] = []
    later = {"address": "127.0.0.2"}  # where nothing listens
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(name, port, *args, **kwargs):
        if name == host:  # checked at loopback; any later answer elsewhere
            lookups.append(name)
            address = "127.0.0.1" if len(lookups) == 1 else later["address"]
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port or 0))]
        return real_getaddrinfo(name, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    try:
        url = f"https://{host}:{server.server_address[1]}/0.png"
        with_extra(monkeypatch, verify=cert)
        stored = ApikleyHook().download_result(url, f"file://{tmp_path}/result.png")
        assert lookups == [host] and stored.size == len(png())
        # the certificate is still checked against the host's name, not the address connected to
        with_extra(monkeypatch, verify=True)
        later["address"] = "127.0.0.1"
        with pytest.raises(Exception, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            ApikleyHook().download_result(url, f"file://{tmp_path}/again.png")
    finally:
        server.shutdown()
        server.server_close()

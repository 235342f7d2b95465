"""Tests for the SSRF-guarded HTTP client, against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pytest_httpserver import HTTPServer
from urllib3.util.retry import Retry
from werkzeug import Request, Response

from app.outbound import guard as http_client
from app.outbound.guard import (
    BlockedDestination,
    UnsafeURL,
    check_url,
    is_address_allowed,
    make_session,
    parse_networks,
)

LOOPBACK = parse_networks("127.0.0.0/8")

BLOCKED = [
    "127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "224.0.0.1", "240.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1",
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "fec0::1", "ff02::1", "2001:db8::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::127.0.0.1", "64:ff9b::a00:1", "64:ff9b:1::1",
    "2002:0a00:0001::1", "2002:7f00:1::1", "100::1", "::2",
]  # fmt: skip
ALLOWED = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"]


@pytest.mark.parametrize("ip", BLOCKED)
def test_blocked_addresses(ip: str) -> None:
    assert not is_address_allowed(ip, ())
    assert http_client.blocked_reason(ip) is not None


@pytest.mark.parametrize("ip", ALLOWED)
def test_global_unicast_addresses_allowed(ip: str) -> None:
    assert is_address_allowed(ip, ())
    assert is_address_allowed(ipaddress.ip_address(ip), ())


def test_allow_list_opens_only_its_networks() -> None:
    assert is_address_allowed("127.0.0.1", LOOPBACK)
    assert is_address_allowed("::ffff:127.0.0.1", LOOPBACK)
    assert not is_address_allowed("10.0.0.1", LOOPBACK)
    assert not is_address_allowed("::1", LOOPBACK)


def test_blocked_reason_names_the_kind_of_address() -> None:
    assert http_client.blocked_reason("10.0.0.1") == "private address"
    assert http_client.blocked_reason("169.254.169.254") == "link-local address"
    assert http_client.blocked_reason("100.64.0.1") == "shared (CGNAT) address"
    assert http_client.blocked_reason("::ffff:127.0.0.1") == (
        "loopback address (IPv4-mapped 127.0.0.1)"
    )


def test_parse_networks() -> None:
    assert parse_networks(None) == ()
    assert parse_networks("") == ()
    assert parse_networks("127.0.0.0/8, 10.0.0.0/8  fd00::/8") == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert parse_networks(["10.1.2.3", ipaddress.ip_network("::1/128")]) == (
        ipaddress.ip_network("10.1.2.3/32"),
        ipaddress.ip_network("::1/128"),
    )
    with pytest.raises(ValueError, match="invalid network 'nonsense'"):
        parse_networks("127.0.0.0/8,nonsense")
    with pytest.raises(ValueError, match="invalid network"):
        parse_networks(["10.0.0.0/33"])


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "file:///etc/passwd",
        "gopher://127.0.0.1/",
        "http:///path-only",
        "not a url",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://127.0.0.1:8080/",
        "http://0x7f000001/",
        "http://host.invalid/",
    ],
)
def test_check_url_refuses(url: str) -> None:
    with pytest.raises(UnsafeURL):
        check_url(url, ())


def test_check_url_refuses_a_name_resolving_to_a_private_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_client, "resolve_host", lambda host, port: ["10.1.2.3"])
    with pytest.raises(UnsafeURL, match=r"10\.1\.2\.3 \(resolved from 'hooks\.example'\)"):
        check_url("https://hooks.example/receive", ())


def test_check_url_refuses_if_any_address_is_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_client, "resolve_host", lambda host, port: ["8.8.8.8", "10.0.0.7"])
    with pytest.raises(UnsafeURL, match="private address"):
        check_url("https://hooks.example/", ())


def test_check_url_accepts_allowed_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    check_url("http://127.0.0.1:5000/hook", LOOPBACK)
    check_url("http://127.0.0.1:5000/hook", "127.0.0.0/8")
    monkeypatch.setattr(http_client, "resolve_host", lambda host, port: ["1.1.1.1"])
    check_url("https://hooks.example/", ())


@pytest.fixture
def server() -> Iterator[HTTPServer]:
    with HTTPServer(host="127.0.0.1", threaded=True) as srv:
        yield srv


def test_allowed_request_succeeds(server: HTTPServer) -> None:
    server.expect_request("/ok").respond_with_json({"ok": True})
    with make_session(LOOPBACK, user_agent="switchboard-test") as session:
        response = session.get(server.url_for("/ok"))
    assert response.json() == {"ok": True}
    assert server.log[0][0].headers["User-Agent"] == "switchboard-test"


def test_loopback_refused_without_allow_list(server: HTTPServer) -> None:
    server.expect_request("/ok").respond_with_data("secret")
    with make_session() as session, pytest.raises(BlockedDestination) as excinfo:
        session.get(server.url_for("/ok"))
    assert str(excinfo.value) == "refused to connect to 127.0.0.1: loopback address"
    assert isinstance(excinfo.value, requests.ConnectionError)
    assert excinfo.value.request is not None
    assert server.log == []


def test_private_address_refused_without_connecting() -> None:
    # 10.0.0.1 is refused before any socket is opened; it must never be contacted.
    with make_session(LOOPBACK) as session, pytest.raises(requests.RequestException) as excinfo:
        session.get("http://10.0.0.1/")
    assert isinstance(excinfo.value, BlockedDestination)
    assert "refused to connect to 10.0.0.1: private address" in str(excinfo.value)


def test_dns_rebinding_is_refused_at_connect_time(
    server: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.expect_request("/hook").respond_with_data("internal")
    url = f"http://rebind.example:{server.port}/hook"
    monkeypatch.setattr(http_client, "resolve_host", lambda host, port: ["93.184.216.34"])
    check_url(url, ())  # at creation time the name looks public
    monkeypatch.setattr(http_client, "resolve_host", lambda host, port: ["127.0.0.1"])
    with make_session() as session, pytest.raises(BlockedDestination, match="loopback"):
        session.post(url, json={"event": "x"})
    assert server.log == []


def test_only_allowed_candidates_are_dialled(
    server: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.expect_request("/hook").respond_with_data("ok")
    monkeypatch.setattr(http_client, "resolve_host", lambda host, port: ["10.0.0.1", "127.0.0.1"])
    with make_session(LOOPBACK) as session:
        response = session.get(f"http://mixed.example:{server.port}/hook")
    assert response.text == "ok"
    assert server.log[0][0].headers["Host"] == f"mixed.example:{server.port}"


def test_refusal_is_not_retried(server: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def resolve(host: str, port: int | None) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    monkeypatch.setattr(http_client, "resolve_host", resolve)
    with make_session() as session:
        adapter = session.get_adapter("http://")
        assert isinstance(adapter, http_client.GuardedAdapter)
        adapter.max_retries = Retry(total=5, backoff_factor=0)
        with pytest.raises(BlockedDestination):
            session.get(f"http://retry.example:{server.port}/")
    assert calls == ["retry.example"]


def test_redirect_to_private_address_is_refused(server: HTTPServer) -> None:
    server.expect_request("/start").respond_with_data(
        "", status=302, headers={"Location": "http://10.0.0.1/latest/meta-data"}
    )
    with make_session(LOOPBACK) as session:
        assert session.get(server.url_for("/start"), allow_redirects=False).status_code == 302
        with pytest.raises(BlockedDestination, match="10.0.0.1: private address"):
            session.get(server.url_for("/start"))


def test_redirect_to_loopback_refused_when_not_allowed(server: HTTPServer) -> None:
    server.expect_request("/internal").respond_with_data("internal")
    with HTTPServer(host="127.0.0.2") as front:
        front.expect_request("/start").respond_with_data(
            "", status=307, headers={"Location": server.url_for("/internal")}
        )
        with make_session("127.0.0.2/32") as session:
            with pytest.raises(BlockedDestination, match="127.0.0.1: loopback"):
                session.get(front.url_for("/start"))
        assert len(front.log) == 1
    assert server.log == []


def test_proxies_are_ignored_from_environment_and_refused_explicitly(
    server: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.expect_request("/ok").respond_with_data("direct")
    monkeypatch.setenv("HTTP_PROXY", "http://10.0.0.1:3128")
    with make_session(LOOPBACK) as session:
        assert session.get(server.url_for("/ok")).text == "direct"
        with pytest.raises(BlockedDestination, match="proxies are disabled"):
            session.get(server.url_for("/ok"), proxies={"http": "http://127.0.0.1:1"})


def test_connections_are_pooled() -> None:
    client_ports: list[int] = []

    class KeepAliveHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # werkzeug's dev server always closes, this one does not

        def do_GET(self) -> None:
            client_ports.append(self.client_address[1])
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), KeepAliveHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/pooled"
        with make_session(LOOPBACK) as session:
            for _ in range(3):
                assert session.get(url).text == "ok"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert len(client_ports) == 3
    assert len(set(client_ports)) == 1, "every request should reuse one pooled connection"


def _self_signed_cert(tmp_path: Path, hostname: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_verifies_and_sends_sni_for_the_original_hostname(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hostname = "tls.switchboard.test"
    cert_path, key_path = _self_signed_cert(tmp_path, hostname)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server_names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    monkeypatch.setattr(http_client, "resolve_host", lambda host, port: ["127.0.0.1"])
    with HTTPServer(host="127.0.0.1", ssl_context=context) as server:
        server.expect_request("/tls").respond_with_data("secure")
        with make_session(LOOPBACK) as session:
            url = f"https://{hostname}:{server.port}/tls"
            assert session.get(url, verify=str(cert_path)).text == "secure"
            with pytest.raises(requests.exceptions.SSLError):
                session.get(f"https://127.0.0.1:{server.port}/tls", verify=str(cert_path))
    assert server_names[0] == hostname


def test_default_timeout_applies_when_caller_gives_none(server: HTTPServer) -> None:
    def slow(request: Request) -> Response:
        time.sleep(0.5)
        return Response("late")

    server.expect_request("/slow").respond_with_handler(slow)
    with make_session(LOOPBACK, default_timeout=(1.0, 0.1)) as session:
        with pytest.raises(requests.Timeout):
            session.get(server.url_for("/slow"))
        assert session.get(server.url_for("/slow"), timeout=2).text == "late"

"""TLS from the agent to the gateway (`databases.tls`) end to end: a real PostgreSQL, a real `goex-proxy run`, psycopg,
psql in the jail and raw sockets as the agent; the certificate issued by the state directory's CA."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import struct
import time
from typing import Any

import psycopg
import pytest
from cryptography import x509
from psycopg import errors

from tests.e2e import test_db_gateway
from tests.e2e.test_db_gateway import gateway_pg, jailed_psql, sleeping, start_gateway
from tests.e2e.test_db_rules import edit, wait_for
from tests.pg import APP_USER, Postgres, server_bin

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(server_bin() is None, reason="PostgreSQL is not installed (tests/install-tools)")]

#: The session's PostgreSQL server, the gateway tests' fixture under a name of this module's.
pg_server = test_db_gateway.postgres
SSL_REQUEST = struct.pack("!II", 8, 80877103)


def start(make_proxy, pg: Postgres, tls: str | None = None) -> tuple[Any, str]:
    """`run` with the shop database and `databases.tls` as given (None: left out); the proxy and mailbot's URL."""
    return start_gateway(make_proxy, pg, f"  tls: {tls}\n" if tls else "")


def given_url(proxy: Any) -> str:
    """The DATABASE_URL `goex-proxy env` gives mailbot."""
    shown = proxy.cli("env", "--agent", "mailbot", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)["env"]["DATABASE_URL"]


def address(url: str) -> tuple[str, int]:
    host, port = url.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)
    return host, int(port)


def asked(url: str, first: bytes = SSL_REQUEST) -> tuple[socket.socket, bytes]:
    """A raw connection to the gateway that sent `first`, and the gateway's one-byte answer."""
    sock = socket.create_connection(address(url), timeout=10)
    sock.sendall(first)
    return sock, sock.recv(1)


def received(sock: socket.socket | ssl.SSLSocket) -> bytes:
    """Everything the gateway sends until it closes the connection."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def startup(user: str = "mailbot", database: str = "shop") -> bytes:
    body = struct.pack("!I", 196608) + f"user\0{user}\0database\0{database}\0\0".encode()
    return struct.pack("!I", len(body) + 4) + body


def test_offered_by_default_and_used_by_clients_that_require_or_verify(make_proxy, pg_server, upstream_ca) -> None:
    proxy, url = start(make_proxy, pg_server)
    assert given_url(proxy) == url  # under offer the URL is as it was: clients that refuse unknown options work
    ca = proxy.home / "mitmproxy-ca-cert.pem"
    for options in ("", "?sslmode=require", f"?sslmode=verify-full&sslrootcert={ca}"):
        with psycopg.connect(url + options, autocommit=True) as conn:
            assert conn.pgconn.ssl_in_use, options  # prefer (the default) takes what is offered
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)
    with psycopg.connect(url + "?sslmode=disable", autocommit=True) as conn:  # offered, not required
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):  # another CA: not trusted
        psycopg.connect(url + f"?sslmode=verify-full&sslrootcert={upstream_ca[1]}").close()


def test_the_certificate_chains_to_the_state_directorys_ca_with_the_loopback_names(make_proxy, pg_server) -> None:
    proxy, url = start(make_proxy, pg_server)
    ca_file = proxy.home / "mitmproxy-ca-cert.pem"
    ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
    context = ssl.create_default_context(cafile=str(ca_file))
    for name in ("127.0.0.1", "localhost"):
        sock, answer = asked(url)
        assert answer == b"S"
        with context.wrap_socket(sock, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
    leaf = x509.load_der_x509_certificate(der)
    leaf.verify_directly_issued_by(ca)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(map(str, names.get_values_for_type(x509.IPAddress))) == ["127.0.0.1", "::1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sock, answer = asked(url)
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"), context.wrap_socket(
            sock, server_hostname="db.example.com"):
        pass
    # The key was never left in the state directory (it is only in the running gateway's memory).
    assert not [p.name for p in proxy.home.iterdir() if p.name.startswith(".gateway-tls-")]


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_a_client_that_offers_only_tls_1_1_is_refused(make_proxy, pg_server) -> None:
    proxy, url = start(make_proxy, pg_server)

    def handshake(version: ssl.TLSVersion) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # lets this side offer TLS 1.1 at all
        context.minimum_version = context.maximum_version = version
        sock, answer = asked(url)
        assert answer == b"S"
        with context.wrap_socket(sock):
            pass

    handshake(ssl.TLSVersion.TLSv1_2)  # the same client, allowed 1.2, gets through
    # The gateway ends the handshake (asyncio closes without sending OpenSSL's protocol_version alert); a client that
    # could not offer 1.1 would fail before sending anything, with NO_PROTOCOLS_AVAILABLE.
    with pytest.raises(ssl.SSLError, match="EOF occurred|PROTOCOL_VERSION|protocol version"):
        handshake(ssl.TLSVersion.TLSv1_1)
    handshake(ssl.TLSVersion.TLSv1_3)  # and the gateway goes on, its log without a traceback
    assert "Traceback" not in proxy.log_text()


def test_require_refuses_plaintext_and_the_url_it_gives_verifies(make_proxy, pg_server) -> None:
    proxy, url = start(make_proxy, pg_server, "require")
    assert "(TLS: require)" in proxy.log_text()  # `run` says what it does
    with pytest.raises(psycopg.OperationalError, match="accepts only encrypted connections"):
        psycopg.connect(url + "?sslmode=disable").close()
    sock, first = asked(url, startup())  # the error's code is PostgreSQL's for a pg_hba refusal (no encryption)
    with sock:
        error = first + received(sock)
    assert error.startswith(b"E") and b"C28000\0" in error and b"SFATAL\0" in error
    given = given_url(proxy)
    ca = proxy.home / "mitmproxy-ca-cert.pem"
    assert given == f"{url}?sslmode=verify-full&sslrootcert={ca}"
    with psycopg.connect(given, autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT item FROM orders WHERE id = 3").fetchone() == ("plums",)
    docker = proxy.cli("env", "--agent", "mailbot", "--format", "json", "--proxy-host", "host.docker.internal",
                       "--ca-path", "/certs/goex.pem")  # a name the certificate is not for: the chain is checked
    assert json.loads(docker.stdout)["env"]["DATABASE_URL"].endswith("?sslmode=verify-ca&sslrootcert=/certs/goex.pem")


def test_require_taken_over_by_a_reload_ends_plaintext_connections_at_their_next_statement(make_proxy,
                                                                                           pg_server) -> None:
    """A config edited to `tls: require` under a running gateway: a connection made in plaintext before (under
    offer) would otherwise go on sending statements and results unencrypted for as long as it stays open."""
    proxy, url = start(make_proxy, pg_server, "offer")
    plain = psycopg.connect(url + "?sslmode=disable", autocommit=True)
    encrypted = psycopg.connect(url + "?sslmode=require", autocommit=True)
    assert not plain.pgconn.ssl_in_use and encrypted.pgconn.ssl_in_use
    assert plain.execute("SELECT count(*) FROM orders").fetchone() == (3,)
    edit(proxy, proxy.config.read_text().replace("  tls: offer\n", "  tls: require\n"))
    wait_for(lambda: "databases reloaded" in proxy.log_text(), what="the gateway's reload")
    with pytest.raises(psycopg.OperationalError, match="accepts only encrypted connections"):
        plain.execute("SELECT count(*) FROM orders")
    assert plain.closed or plain.broken
    assert encrypted.execute("SELECT count(*) FROM orders").fetchone() == (3,)  # in TLS: admitted as before
    encrypted.close()


def test_off_declines_tls_as_before(make_proxy, pg_server) -> None:
    proxy, url = start(make_proxy, pg_server, "off")
    sock, answer = asked(url)
    sock.close()
    assert answer == b"N"
    with pytest.raises(psycopg.OperationalError, match="server does not support SSL, but SSL was required"):
        psycopg.connect(url + "?sslmode=require").close()
    with psycopg.connect(given_url(proxy), autocommit=True) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)


def test_encryption_asked_again_inside_tls_or_plaintext_sent_behind_the_request_is_refused(make_proxy,
                                                                                           pg_server) -> None:
    _, url = start(make_proxy, pg_server, "require")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    sock, answer = asked(url)
    assert answer == b"S"
    with context.wrap_socket(sock) as tls:
        tls.sendall(SSL_REQUEST)
        error = received(tls)
    assert error.startswith(b"E") and b"C08P01\0" in error and b"an encryption request inside TLS" in error
    sock, answer = asked(url)
    with context.wrap_socket(sock) as tls:  # the GSS request too (libpq never sends it after TLS)
        tls.sendall(struct.pack("!II", 8, 80877104))
        assert b"C08P01\0" in received(tls)
    # A startup packet sent unencrypted right behind the SSLRequest is not taken as if it came through TLS (as
    # PostgreSQL, CVE-2021-23214): the connection ends with no answer.
    sock, answer = asked(url, SSL_REQUEST + startup())
    with sock:
        assert answer + received(sock) == b""
    sock, answer = asked(url)  # and the gateway goes on
    sock.close()
    assert answer == b"S"


def test_a_cancel_request_sent_over_tls_cancels_the_statement(make_proxy, pg_server) -> None:
    if psycopg.pq.version() < 170000:
        pytest.skip("libpq before 17 sends cancel requests unencrypted")
    proxy, _ = start(make_proxy, pg_server, "require")
    pg = gateway_pg((proxy, ""))
    # verify-full: libpq 17+ sends the cancel request in TLS, checked as the connection was, or not at all.
    with psycopg.connect(given_url(proxy), autocommit=True) as conn:
        worker, outcome = sleeping(conn, pg)
        started = time.monotonic()
        conn.cancel_safe(timeout=10)
        worker.join(30)
        assert not worker.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], errors.QueryCanceled), outcome
        assert time.monotonic() - started < 20
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_psql_in_the_jail_verifies_the_gateway_under_require(make_proxy, pg_server) -> None:
    proxy, url = start(make_proxy, pg_server, "require")
    ran = jailed_psql(proxy, "SELECT item FROM orders WHERE id = 1")
    assert ran.returncode == 0 and "apples" in ran.stdout, ran.stderr
    assert f"DATABASE_URL={url}?sslmode=verify-full&sslrootcert={proxy.home / 'mitmproxy-ca-cert.pem'}" in ran.stdout
    assert APP_USER[1] not in ran.stdout + ran.stderr
    proxy.stop()  # the jail's own gateway (no `run`) offers the same, on its own port
    ran = jailed_psql(proxy, "SELECT count(*) FROM orders")
    assert ran.returncode == 0 and ran.stdout.strip().endswith("3"), ran.stderr
    assert "sslmode=verify-full&sslrootcert=" in ran.stdout

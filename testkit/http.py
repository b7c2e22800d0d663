"""Requests as a client sends them through nginx (or a load balancer), health probes, and TLS
handshakes. For load, see testkit.load; for uWSGI's own socket, testkit.uwsgi."""

import json
import socket
import ssl
import urllib.error
import urllib.request

import pytest


def request(url, data=None, headers=None, timeout=30):
    """(status, headers, body text) of a GET, or of a POST of data (bytes), also for 4xx/5xx answers."""
    prepared = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(prepared, timeout=timeout) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


def get(url, **headers):
    """(status, headers, body text) for a GET, also for 4xx/5xx answers."""
    return request(url, headers=headers)


def post_json(url, document):
    """(status, JSON answer) of a POST of document as JSON."""
    status, _, body = request(url, json.dumps(document).encode(), {"Content-Type": "application/json"})
    return status, json.loads(body)


def health(url, timeout=30):
    """(status, document) of url's /health, also for a 503 (a dependency down)."""
    status, _, body = request(url + "/health", timeout=timeout)
    return status, json.loads(body)


def release(url):
    """The release url's /health reports."""
    return health(url)[1]["release"]


def releases_served(url, count=40):
    """The releases /health reports over `count` requests right now (every worker, once returned)."""
    return {release(url) for _ in range(count)}


def handshake(address, port, cafile, server_hostname, ciphers=None, alpn=None):
    """A TLS 1.2 (with ciphers) or any-version (without) handshake with address:port for
    server_hostname, checked against cafile: (cipher, ALPN protocol)."""
    context = ssl.create_default_context(cafile=str(cafile))
    if ciphers:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(ciphers)
    if alpn:
        context.set_alpn_protocols(alpn)
    with (
        socket.create_connection((address, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        return tls.cipher()[0], tls.selected_alpn_protocol()


def assert_mozilla_intermediate_tls(address, port, cafile, server_hostname):
    """Mozilla's intermediate profile: HTTP/2 by ALPN, TLS 1.2 only with forward-secret AEAD suites
    (nginx's default list accepted both of the refused ones)."""
    assert handshake(address, port, cafile, server_hostname, alpn=["h2", "http/1.1"])[1] == "h2"
    good = "ECDHE-RSA-AES128-GCM-SHA256"
    assert handshake(address, port, cafile, server_hostname, ciphers=good) == (good, None)
    for outside in ("AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA"):
        with pytest.raises(ssl.SSLError):
            handshake(address, port, cafile, server_hostname, ciphers=outside)

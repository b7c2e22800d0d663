"""A use_tls service behind the lab's load balancer: HTTPS through lb1, handshaken for real.

The lab boots lb1 and web1. A test CA on this machine signs a certificate for example.com for each
of them, and they are put where the service README says, before `make provision`: the web host's in
shared/tls/, the load balancer's chain and key in /etc/haproxy/my_service/tls.pem, and the CA in
lb1's /usr/local/share/ca-certificates/ (a private CA's place; provision installs ca-certificates,
whose bundle HAProxy checks the web hosts against). Clients here speak TLS to lb1 with the CA.
"""

import http.client
import socket
import ssl
import subprocess
import time

import pytest

from testkit.bake import commit
from testkit.http import assert_mozilla_intermediate_tls
from testkit.lab import APP_ROOT, lab_fleet, rotation_of

pytestmark = [pytest.mark.lab, pytest.mark.venv]
DOMAIN = "example.com"
HSTS = "max-age=31536000; includeSubDomains"


def openssl(*arguments, cwd):
    subprocess.run(["openssl", *arguments], cwd=cwd, check=True, capture_output=True, timeout=60)


def certificates(directory):
    """ca.pem, and a certificate for example.com signed by it (site.pem, site.key); a second one for
    example.com that no trusted CA signed (stranger.pem, stranger.key)."""
    directory.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Lab test CA",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=directory)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={DOMAIN}", "-keyout", "site.key",
            "-out", "site.csr", cwd=directory)  # fmt: skip
    (directory / "san.ext").write_text(f"subjectAltName=DNS:{DOMAIN}\n")
    openssl("x509", "-req", "-in", "site.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "site.pem", cwd=directory)  # fmt: skip
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={DOMAIN}",
            "-addext", f"subjectAltName=DNS:{DOMAIN}", "-keyout", "stranger.key", "-out", "stranger.pem",
            cwd=directory)  # fmt: skip
    return directory


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    base = tmp_path_factory.mktemp("fleet-tls")
    tls = certificates(base / "tls")
    with lab_fleet(base, "bookworm", 1, lb=True, use_tls="true") as fleet:
        web1, lb1 = fleet.hosts[0], fleet.lb
        site = (tls / "site.pem").read_text()
        key = (tls / "site.key").read_text()
        # Before `make provision`, as the service README says.
        write(lb1, "/etc/haproxy/my_service/tls.pem", site + key)
        write(lb1, "/usr/local/share/ca-certificates/lab-test-ca.crt", (tls / "ca.pem").read_text(), "644")
        write(web1, f"{APP_ROOT}/shared/tls/fullchain.pem", site, "644")
        write(web1, f"{APP_ROOT}/shared/tls/privkey.pem", key)
        fleet.make("provision")
        fleet.release = commit(fleet.project, "first release")
        fleet.make("deploy")
        fleet.tls = tls
        # lb1 passes requests to web1 once two health checks (2 s apart) passed.
        wait_until_web1_is(fleet, "UP")
        yield fleet


def wait_until_web1_is(fleet, status, seconds=30):
    deadline = time.monotonic() + seconds
    while rotation_of(fleet)["web1"][1] != status and time.monotonic() < deadline:
        time.sleep(0.5)
    assert rotation_of(fleet)["web1"][1] == status, rotation_of(fleet)


def write(host, path, text, mode="600"):
    """Write text to path on the host (its directory made), with mode."""
    result = subprocess.run(
        [*host.ssh_command, f"mkdir -p \"$(dirname '{path}')\" && cat > '{path}' && chmod {mode} '{path}'"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def https_get(fleet, path):
    """GET path from lb1 over TLS, for example.com: (status, headers as a list of pairs, body)."""
    context = ssl.create_default_context(cafile=str(fleet.tls / "ca.pem"))
    connection = http.client.HTTPSConnection(fleet.lb.address, 443, context=context, timeout=30)
    # To lb1's address, checking the name the certificate carries (the request reuses this socket).
    connection.sock = context.wrap_socket(
        socket.create_connection((fleet.lb.address, 443), timeout=30), server_hostname=DOMAIN
    )
    try:
        connection.request("GET", path, headers={"Host": DOMAIN})
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read().decode()
    finally:
        connection.close()


def test_the_load_balancer_speaks_mozillas_intermediate_tls_and_passes_to_the_web_hosts_tls(fleet):
    """lb1 answers HTTPS for example.com with the operator's certificate (HTTP/2 by ALPN; TLS 1.2
    with forward-secret AEAD suites only), sends HSTS and the security headers once, passes the
    request to web1's own TLS site (its certificate checked: /health reports web1's release), and
    plain HTTP only redirects."""
    assert_mozilla_intermediate_tls(fleet.lb.address, 443, fleet.tls / "ca.pem", DOMAIN)
    status, headers, body = https_get(fleet, "/health")
    assert status == 200, body
    assert f'"release": "{fleet.release}"' in body.replace('":"', '": "'), body
    names = [name.lower() for name, _ in headers]
    assert [value for name, value in headers if name.lower() == "strict-transport-security"] == [HSTS]
    assert names.count("x-content-type-options") == 1, headers
    plain = subprocess.run(
        ["curl", "-si", "-H", f"Host: {DOMAIN}", f"http://{fleet.lb.address}/health?x=1"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert plain.startswith("HTTP/1.1 301"), plain
    assert f"location: https://{DOMAIN}/health?x=1" in plain.lower(), plain


def test_a_web_host_whose_certificate_no_trusted_ca_signed_is_taken_out_by_the_load_balancer(fleet):
    """web1's site switched to a self-signed certificate for the same name: lb1's checks fail it
    within seconds and it gets no request (503 from lb1, none of web1's pages); back to the signed
    one, it returns."""
    web1 = fleet.hosts[0]
    tls = f"{APP_ROOT}/shared/tls"
    web1.sh(f"cp {tls}/fullchain.pem {tls}/fullchain.pem.good && cp {tls}/privkey.pem {tls}/privkey.pem.good")
    write(web1, f"{tls}/fullchain.pem", (fleet.tls / "stranger.pem").read_text(), "644")
    write(web1, f"{tls}/privkey.pem", (fleet.tls / "stranger.key").read_text())
    try:
        web1.sh("nginx -t -q && systemctl reload nginx")
        wait_until_web1_is(fleet, "DOWN")
        status, _, body = https_get(fleet, "/health")
        assert status == 503, body
    finally:
        web1.sh(
            f"mv {tls}/fullchain.pem.good {tls}/fullchain.pem && mv {tls}/privkey.pem.good {tls}/privkey.pem"
        )
        web1.sh("nginx -t -q && systemctl reload nginx")
    wait_until_web1_is(fleet, "UP")
    assert https_get(fleet, "/health")[0] == 200

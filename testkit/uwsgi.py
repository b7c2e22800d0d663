"""uWSGI's own sockets, without nginx: a request in the uwsgi protocol (what nginx sends) on its unix
socket, and the stats document on its stats socket.

Standard library only, so that a lab host that has no testkit runs it too (stats_command).
"""

import json
import socket
import struct
import sys
from pathlib import Path


def uwsgi_get(socket_path, path):
    """GET path straight from uWSGI's unix socket in the uwsgi protocol (what nginx sends)."""
    params = {
        "REQUEST_METHOD": "GET",
        "REQUEST_URI": path,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "localhost",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1",
    }
    body = b"".join(
        struct.pack("<H", len(k)) + k.encode() + struct.pack("<H", len(v)) + v.encode()
        for k, v in params.items()
    )
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(30)
        client.connect(str(socket_path))
        client.sendall(struct.pack("<BHB", 0, len(body), 0) + body)
        answer = b"".join(iter(lambda: client.recv(65536), b""))
    # An accepted connection closed without an answer is the failure a reload must never cause:
    # raise it as one (an OSError, as a refused connection is), not as a parsing error.
    if not answer.startswith(b"HTTP/") or b"\r\n\r\n" not in answer:
        raise ConnectionResetError(f"uWSGI answered {path} with {answer[:80]!r}, not an HTTP response")
    head, _, content = answer.partition(b"\r\n\r\n")
    status, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status.split()[1]), headers, content


def uwsgi_stats(socket_path):
    """uWSGI's stats document (every worker's pid, state and loaded apps) from its stats socket
    (var/run/stats.sock under `make serve`, shared/run/stats.sock on a server)."""
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(str(socket_path))
        return json.loads(b"".join(iter(lambda: client.recv(65536), b"")))


def stats_command(python, socket_path):
    """A shell command that prints the stats document (JSON) on a host that has no testkit: this
    module, run by the host's python."""
    return f"{python} - {socket_path} <<'EOF'\n{Path(__file__).read_text()}EOF\n"


if __name__ == "__main__":
    print(json.dumps(uwsgi_stats(sys.argv[1])))

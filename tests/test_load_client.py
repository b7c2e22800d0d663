"""The load client (testkit/load.py) against a server that misbehaves on purpose.

A load balancer may close an idle keep-alive connection just as a client sends on it; browsers
resend such a request once. Resending anything else would hide a real failure: a client that
resent after part of an answer arrived would pass a load balancer that cuts answers mid-flight.
"""

import http.client
import socket
import struct
import threading
import time

import pytest

from testkit.load import Load, exchange

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class Server:
    """A server on 127.0.0.1: each connection answers its first request, then does `second` with
    the next one: "close" (closes before a byte), "cut" (all of an answer but its last byte, then
    closes), "reset" (the status line, then a reset) or "answer"."""

    def __init__(self, second):
        self.second, self.requests = second, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(connection,), daemon=True).start()

    def handle(self, connection):
        with connection:
            for turn in range(2):
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = connection.recv(4096)
                    if not chunk:
                        return
                    request += chunk
                self.requests += 1
                if turn == 1 and self.second == "close":
                    return
                if turn == 1 and self.second == "cut":
                    connection.sendall(ANSWER[:-1])
                    return
                if turn == 1 and self.second == "reset":
                    connection.sendall(ANSWER[:17])
                    time.sleep(0.2)
                    # SO_LINGER 0: close() resets the connection, as a crashing proxy would.
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                connection.sendall(ANSWER)

    def close(self):
        self.listener.close()


def run(second, resend, requests):
    """Send `requests` requests on one keep-alive client; what became of each."""
    server = Server(second)

    def connect():
        return http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)

    outcomes, connection = [], connect()
    try:
        for _ in range(requests):
            try:
                status, connection, resent = exchange(connection, connect, "GET", "/", None, resend)
                outcomes.append(("resent" if resent else "ok", status))
            except Exception as error:  # what the load records as a failed request
                outcomes.append(("failed", type(error).__name__))
                connection.close()
                connection = connect()
    finally:
        connection.close()
        server.close()
    return outcomes


def test_a_browser_like_client_resends_a_request_a_kept_alive_connection_lost_before_any_byte():
    """The second request on a connection the server closes unanswered is sent again, once, on a new
    connection, and counted as a resend."""
    assert run("close", resend=True, requests=2) == [("ok", 200), ("resent", 200)]


def test_a_strict_client_fails_the_request_a_kept_alive_connection_lost_before_any_byte():
    """wrk or a service's client never resends: the same request is a failed request."""
    assert run("close", resend=False, requests=2) == [("ok", 200), ("failed", "ClosedBeforeAnswer")]


@pytest.mark.parametrize("resend", [True, False], ids=["browser_like", "strict"])
@pytest.mark.parametrize("second", ["cut", "reset"])
def test_no_client_resends_after_part_of_the_answer_arrived(resend, second):
    """An answer cut or reset after its first bytes is a failure for every client: nothing is
    resent."""
    outcomes = run(second, resend=resend, requests=2)
    assert outcomes[0] == ("ok", 200)
    assert outcomes[1][0] == "failed", outcomes


@pytest.mark.parametrize("resend", [True, False], ids=["browser_like", "strict"])
def test_a_load_counts_resends_and_records_each_lost_request_of_a_strict_client(resend):
    """Load's own loop: resends are counted in `resent`, never as failures; a strict load records
    each lost request as a failure that names the kept-alive connection."""
    server = Server("close")
    try:
        with Load(server.port, threads=2, max_seconds=5, resend=resend) as load:
            time.sleep(0.5)
    finally:
        server.close()
    assert load.ok > 0
    if resend:
        assert load.failures == [] and load.resent > 0, (load.failures[:3], load.resent)
    else:
        assert load.resent == 0 and load.failures
        lost = [f for f in load.failures if "kept-alive connection closed before any byte" not in f]
        assert lost == [], lost[:3]

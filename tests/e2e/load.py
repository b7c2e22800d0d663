"""Bounded background load for end-to-end tests: every exception in a client is a recorded failure.

A load thread that dies quietly lets a test pass on the answers collected before it died (a
connection accepted and closed without a reply raised IndexError in an earlier poller), so each
client catches everything, records it, and goes on with a fresh connection until stopped.
"""

import http.client
import json
import socket
import threading
import time


class ClosedBeforeAnswer(http.client.RemoteDisconnected):
    """A connection (kept-alive, or new) closed before a single byte of the answer arrived."""


def answer_started(connection):
    """Did the answer's first byte arrive (peeked: http.client still reads it), or was the
    connection closed (or reset) before any? Waits up to the connection's timeout."""
    try:
        return connection.sock.recv(1, socket.MSG_PEEK) != b""
    except ConnectionResetError:
        return False


def exchange(connection, connect, method, path, payload, resend=True):
    """(status, connection, resent). A request that a reused keep-alive connection lost before any
    byte of its answer arrived is, with resend, sent once more on a new connection (connect()), as
    browsers do (RFC 9112 9.3.1): a server may close an idle keep-alive connection at any moment
    (nginx does when it reloads); without resend it raises ClosedBeforeAnswer. Once a byte of the
    answer arrived, nothing is ever resent: a cut answer is a failure. Other exceptions propagate."""
    headers = {"Content-Type": "application/json"}
    reused = connection.sock is not None
    try:
        connection.request(method, path, body=payload, headers=headers)
        started = answer_started(connection)
    except (BrokenPipeError, ConnectionResetError):
        started = False
    resent = False
    if not started:
        connection.close()
        if not (resend and reused):
            kind = "a kept-alive" if reused else "a new"
            raise ClosedBeforeAnswer(
                f"{method} {path}: {kind} connection closed before any byte of the answer"
            )
        connection = connect()
        connection.request(method, path, body=payload, headers=headers)
        resent = True
    response = connection.getresponse()
    response.read()
    return response.status, connection, resent


class Load:
    """`threads` keep-alive clients loop `requests` ((method, path) or (method, path, JSON body), in
    turn) against 127.0.0.1:port until stopped or max_seconds passed; any answer but 200 (201 for a
    POST) or any exception is a failure, recorded with what it was. Strict (resend=False, the
    default) as wrk or a service's client; with resend, browser-like, and each resend is counted in
    `resent` for the test to bound."""

    def __init__(
        self, port, threads=50, max_seconds=300, requests=(("GET", "/"),), host="127.0.0.1", resend=False
    ):
        self.host, self.port, self.requests, self.resend = host, port, requests, resend
        self.deadline = time.monotonic() + max_seconds
        self.ok, self.failures, self.running, self.resent = 0, [], True, 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(threads)]

    def connect(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=30)

    def client(self):
        connection, sent = self.connect(), 0
        while self.running and time.monotonic() < self.deadline:
            method, path, *body = self.requests[sent % len(self.requests)]
            sent += 1
            expected = 201 if method == "POST" else 200
            try:
                payload = json.dumps(body[0] if body else {}).encode() if method == "POST" else None
                answer = exchange(connection, self.connect, method, path, payload, self.resend)
                status, connection, resent = answer
                if resent:
                    with self.lock:
                        self.resent += 1
                outcome = status if status != expected else "ok"
            except Exception as error:  # every exception is a failed request
                outcome = f"{method} {path}: {error!r}"
                connection.close()
                connection = self.connect()
            with self.lock:
                if outcome == "ok":
                    self.ok += 1
                else:
                    self.failures.append(outcome)
        connection.close()

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        for thread in self.threads:
            thread.join(timeout=60)
        stuck = sum(thread.is_alive() for thread in self.threads)
        if stuck:
            self.failures.append(f"{stuck} load threads still running 60 s after the stop")

"""The one load client of the tests and the benchmarks: threads of http.client, every exception a
recorded failure.

`threads` clients each send `requests` ((method, path) or (method, path, JSON body), in turn, each
client starting at another of them) to host:port until stopped or max_seconds passed. Any answer
but 200 (201 for a POST) and any exception is a failed request, recorded with what it was: a load
thread that died quietly would let a test pass on the answers collected before it died (a
connection accepted and closed without a reply raised IndexError in an earlier poller), so each
client catches everything, records it, and goes on with a fresh connection until stopped.

What varies is said by the caller:
- keep_alive: one connection per client, reused (the default); without, each request says
  `Connection: close`, the client closes the connection once answered and opens a new one.
- resend: a request that a reused keep-alive connection lost before any byte of its answer arrived.
  Strict (resend=False, the default), as wrk, `requests` without retries or a service's client: a
  failed request. Browser-like (resend=True): sent once more on a new connection, as browsers do
  (RFC 9112 9.3.1), and counted in `resent` for the test to bound. Once a byte of the answer
  arrived, nothing is ever resent: a cut answer is a failure for every client.
- rate: 0 sends back to back; otherwise each client is paced to rate / threads requests a second
  (a request that is late is sent at once, with no catching up: a fast error does not make a
  client send more).
- record: keep (start, latency, failure or None) for every request in `records` (a benchmark's
  latencies); failures are in `failures` either way.
"""

import http.client
import json
import socket
import threading
import time

JSON = {"Content-Type": "application/json"}


class ClosedBeforeAnswer(http.client.RemoteDisconnected):
    """A connection (kept-alive, or new) closed before a single byte of the answer arrived."""


def answer_started(connection):
    """Did the answer's first byte arrive (peeked: http.client still reads it), or was the
    connection closed (or reset) before any? Waits up to the connection's timeout."""
    try:
        return connection.sock.recv(1, socket.MSG_PEEK) != b""
    except ConnectionResetError:
        return False


def exchange(connection, connect, method, path, payload, resend, headers=JSON):
    """(status, connection, resent). A request that a reused keep-alive connection lost before any
    byte of its answer arrived is, with resend, sent once more on a new connection (connect()): a
    server may close an idle keep-alive connection at any moment (nginx does when it reloads);
    without resend it raises ClosedBeforeAnswer. Once a byte of the answer arrived, nothing is ever
    resent: a cut answer is a failure. Other exceptions propagate."""
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
    """Load on host:port while it is running: `with Load(...) as load:`, or start() and stop().
    Counts `ok` and `resent`, lists `failures` (an answer's status, or what was raised, with the
    request); see the module's docstring for the options."""

    def __init__(
        self,
        port,
        threads=50,
        max_seconds=300,
        requests=(("GET", "/"),),
        host="127.0.0.1",
        *,
        resend=False,
        keep_alive=True,
        rate=0.0,
        record=False,
        timeout=30.0,
    ):
        self.host, self.port, self.requests, self.resend = host, port, requests, resend
        self.timeout, self.record, self.keep_alive = timeout, record, keep_alive
        self.headers = JSON if keep_alive else {**JSON, "Connection": "close"}
        # Seconds between two requests of one client (0: back to back).
        self.interval = threads / rate if rate else 0.0
        self.deadline = time.monotonic() + max_seconds
        self.ok, self.failures, self.resent, self.records, self.stuck = 0, [], 0, [], 0
        self.lock, self.stopped = threading.Lock(), threading.Event()
        self.threads = [
            threading.Thread(target=self.client, args=(n, threads), daemon=True) for n in range(threads)
        ]

    def connect(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def client(self, number, threads):
        connection, sent = self.connect(), number
        next_at = time.monotonic() + self.interval * number / threads
        while not self.stopped.is_set() and time.monotonic() < self.deadline:
            if self.interval and self.stopped.wait(max(0.0, next_at - time.monotonic())):
                break
            method, path, *body = self.requests[sent % len(self.requests)]
            sent += 1
            expected = 201 if method == "POST" else 200
            start = time.monotonic()
            try:
                payload = json.dumps(body[0] if body else {}).encode() if method == "POST" else None
                answer = exchange(connection, self.connect, method, path, payload, self.resend, self.headers)
                status, connection, resent = answer
                failure = status if status != expected else None
                if not self.keep_alive:
                    connection.close()
            except Exception as error:  # every exception is a failed request
                failure, resent = f"{method} {path}: {error!r}", False
                connection.close()
                connection = self.connect()
            latency = time.monotonic() - start
            with self.lock:
                self.resent += resent
                if failure is None:
                    self.ok += 1
                else:
                    self.failures.append(failure)
                if self.record:
                    self.records.append((start, latency, failure))
            next_at = max(next_at + self.interval, time.monotonic())
        connection.close()

    def start(self):
        for thread in self.threads:
            thread.start()
        return self

    def stop(self):
        """Stop every client; one still running a request's timeout + 30 s later is a failure."""
        self.stopped.set()
        for thread in self.threads:
            thread.join(timeout=self.timeout + 30)
        self.stuck = sum(thread.is_alive() for thread in self.threads)
        if self.stuck:
            self.failures.append(
                f"{self.stuck} load threads still running {self.timeout + 30:g} s after the stop"
            )
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

"""A local stand-in for Sentry's ingest: records every envelope the SDK posts, decompressed.

The SDK posts envelopes to /api/<project>/envelope/ (gzip, or brotli when the service has it).
An envelope is a JSON header line, then items: a JSON item header line and a payload of `length`
bytes (or up to the next newline). Tests read the items by type (event, check_in, transaction...).
"""

import gzip
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    import brotli
except ImportError:  # the SDK only sends brotli when the service has it installed
    brotli = None


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "br":
            assert brotli is not None, "the service sends brotli: install brotli beside pytest"
            body = brotli.decompress(body)
        with self.server.lock:
            self.server.envelopes.append(body)
            self.server.encodings.add(encoding)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def items(raw):
    """(item header, payload bytes) pairs of one raw envelope."""
    _, _, rest = raw.partition(b"\n")
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        header = json.loads(line)
        if "length" in header:
            payload, rest = rest[: header["length"]], rest[header["length"] + 1 :]
        else:
            payload, _, rest = rest.partition(b"\n")
        yield header, payload


class FakeIngest:
    """`with FakeIngest() as ingest:` serves on a free loopback port until the block ends."""

    def __enter__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.envelopes, self.server.encodings, self.server.lock = [], set(), threading.Lock()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def dsn(self, key):
        return f"http://{key}@127.0.0.1:{self.server.server_port}/1"

    @property
    def envelopes(self):
        with self.server.lock:
            return list(self.server.envelopes)

    @property
    def encodings(self):
        return set(self.server.encodings)

    def payloads(self, kind):
        """The JSON payloads of every recorded item of one type."""
        pairs = (pair for raw in self.envelopes for pair in items(raw))
        return [json.loads(payload) for header, payload in pairs if header["type"] == kind]

    def wait_for(self, kind, predicate=lambda payload: True, timeout=60):
        """The first item of a type that matches, waiting for the service's processes to send it."""
        deadline = time.monotonic() + timeout
        while True:
            found = [payload for payload in self.payloads(kind) if predicate(payload)]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching {kind} within {timeout} s; got {self.payloads(kind)}")
            time.sleep(0.2)

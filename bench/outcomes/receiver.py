#!/usr/bin/env python3
"""A webhook receiver for the outcomes benchmark: checks each POST's signature (HMAC-SHA256 with the secret given as
the first argument over TIMESTAMP.BODY, docs/api.md "Outcome webhooks"), answers 204 (401 to a bad signature, which
herald retries, so a run with one never completes) and counts the outcomes it got.

It counts the events of a body by their opening `{"id":` rather than decoding the JSON: it shares the machine's
cores with herald, and decoding cost it about 2 µs per outcome, which is the receiver's work, not herald's (the
tests decode every event and check its fields). Prints its port on the first line of stdout; GET /count answers
the number of outcomes received, GET /posts the number of POSTs they came in, GET /bad the bad signatures."""
import hashlib, hmac, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = sys.argv[1].encode() if len(sys.argv) > 1 else b"bench"
count = 0
posts = 0
bad = 0
lock = threading.Lock()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        global count, posts, bad
        body = self.rfile.read(int(self.headers["content-length"]))
        ts = self.headers.get("herald-timestamp", "")
        want = "v1=" + hmac.new(SECRET, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, self.headers.get("herald-signature", "")):
            with lock:
                bad += 1
            self.send_response(401)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        n = body.count(b'{"id":')
        with lock:
            count += n
            posts += 1
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()
    def do_GET(self):
        value = {"/posts": posts, "/bad": bad}.get(self.path, count)
        text = str(value).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)
    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()

#!/usr/bin/env python3
"""A webhook receiver for the outcomes benchmark: answers every POST 204 and counts the outcomes it got.
Prints its port on the first line of stdout; GET /count answers the number of outcomes received, GET /posts the
number of POSTs they came in."""
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

count = 0
posts = 0
lock = threading.Lock()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        global count, posts
        body = self.rfile.read(int(self.headers["content-length"]))
        n = len(json.loads(body)["outcomes"])
        with lock:
            count += n
            posts += 1
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()
    def do_GET(self):
        text = str(posts if self.path == "/posts" else count).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)
    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()

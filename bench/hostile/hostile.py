#!/usr/bin/env python3
"""The hostile inputs of bench/hostile/run.sh against a running `herald serve`; see that script."""

import argparse
import json
import resource
import socket
import sys
import threading
import time

ap = argparse.ArgumentParser()
ap.add_argument("--pid", type=int, required=True)
ap.add_argument("--addrs", required=True)
ap.add_argument("--password", required=True)
ap.add_argument("--domain", required=True)
ap.add_argument("--queued", type=int, default=1_000_000)
ap.add_argument("--flood", type=int, default=20_000)
args = ap.parse_args()

addrs = json.load(open(args.addrs))


def hostport(s):
    h, p = s.rsplit(":", 1)
    return (h, int(p))


HTTP = hostport(addrs["http"][0])
HTTP_UNLIMITED = hostport(addrs["http"][1])
SMTP = hostport(addrs["esmtp"][0])
CONTROL = hostport(addrs["control"][0])
# The attacker is 127.0.0.1; the probe, an operator, comes from another address.
PROBE_FROM = ("127.0.0.2", 0)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_kib(field="VmRSS"):
    try:
        for line in open(f"/proc/{args.pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


class Watch:
    """Samples herald's RSS and probes the console and /healthz, per phase."""

    def __init__(self):
        self.phase = "start"
        self.peak = {}
        self.worst = {}
        self.failures = {}
        self.stop = False
        self.lock = threading.Lock()

    def run_rss(self):
        while not self.stop:
            r = rss_kib()
            with self.lock:
                self.peak[self.phase] = max(self.peak.get(self.phase, 0), r)
            time.sleep(0.05)

    def run_probe(self):
        while not self.stop:
            for name, probe in (("console version", console_version), ("/healthz", healthz)):
                t0 = time.monotonic()
                try:
                    probe()
                    took = time.monotonic() - t0
                    err = None if took <= 1.0 else f"{name} took {took:.2f} s"
                except Exception as e:  # noqa: BLE001 - any failure counts
                    took = time.monotonic() - t0
                    err = f"{name}: {e}"
                with self.lock:
                    self.worst[self.phase] = max(self.worst.get(self.phase, 0.0), took)
                    if err:
                        self.failures.setdefault(self.phase, []).append(err)
            time.sleep(0.25)


def connect(addr, source=None, timeout=1.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if source:
        s.bind(source)
    s.connect(addr)
    return s


def read_reply(f):
    status = f.readline()
    if not status:
        raise RuntimeError("console closed the connection")
    n = int(status.split()[1])
    return status.split()[0], f.read(n)


def console_version():
    with connect(CONTROL, PROBE_FROM) as s:
        f = s.makefile("rb")
        s.sendall(f"auth {args.password}\nversion\n".encode())
        ok, _ = read_reply(f)
        if ok != b"OK":
            raise RuntimeError("auth refused")
        ok, text = read_reply(f)
        if ok != b"OK" or not text.startswith(b"herald "):
            raise RuntimeError(f"version answered {ok!r} {text!r}")


def healthz():
    with connect(HTTP, PROBE_FROM) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        line = s.makefile("rb").readline()
        if not line.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"/healthz answered {line!r}")


def http_post(addr, path, body, timeout=600, send_body=True):
    """POSTs body; returns (status, body text). With send_body False only the head goes out first."""
    with connect(addr, timeout=timeout) as s:
        head = (
            f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode()
        s.sendall(head)
        if send_body:
            try:
                s.sendall(body)
            except OSError:
                pass  # refused before the body was read
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
    text = data.decode("utf-8", "replace")
    status = int(text.split(" ", 2)[1]) if text.startswith("HTTP/") else 0
    return status, text.split("\r\n\r\n", 1)[-1][:300]


def token(i):
    return "%064x" % (0x4057_1e00_0000_0000 + i)


def tokens_body(start, n):
    parts = [b'{"domain":"', args.domain.encode(), b'","payload":{"aps":{"alert":"hostile"}},"tokens":["']
    parts.append(b'","'.join(token(i).encode() for i in range(start, start + n)))
    parts.append(b'"]}')
    return b"".join(parts)


def smtp_cmd(f, s, line):
    s.sendall(line)
    return smtp_reply(f)


def smtp_reply(f):
    while True:
        reply = f.readline()
        if not reply:
            raise RuntimeError("SMTP connection closed")
        if reply[3:4] == b" ":
            return reply.decode().strip()


def mcmt_flood(recipients, parts):
    msg = [
        b"From: a@b.example\r\nTo: x@y\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/vnd.msys.mcmt; boundary="B"\r\n\r\n'
    ]
    part = b'--B\r\nContent-Type: message/vnd.msys.apn\r\n\r\n\r\n{"aps":{"alert":"x"}}\r\n'
    msg.append(part * parts)
    msg.append(b"--B--\r\n.\r\n")
    with connect(SMTP, timeout=600) as s:
        f = s.makefile("rb")
        f.readline()
        smtp_cmd(f, s, b"EHLO hostile.example\r\n")
        smtp_cmd(f, s, b"MAIL FROM:<a@b.example>\r\n")
        for i in range(recipients):
            smtp_cmd(f, s, f"RCPT TO:<{token(i)}@{args.domain}>\r\n".encode())
        smtp_cmd(f, s, b"DATA\r\n")
        s.sendall(b"".join(msg))
        return smtp_reply(f)


def flood(addr, n):
    """Opens n connections from the attacker's address and holds them; returns a description of how many herald
    kept, refused with an answer (503 / 421) or closed, and how many could not connect."""
    socks = []
    errors = {}
    for _ in range(n):
        try:
            socks.append(connect(addr, timeout=0.5))
        except OSError as e:
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
    time.sleep(2)
    kept = refused = 0
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(4096)
            if data.startswith(b"220"):
                kept += 1  # an ESMTP greeting: a session
            else:
                refused += 1  # a 503 / 421 answer, or closed
        except BlockingIOError:
            kept += 1
        except OSError:
            refused += 1
    for s in socks:
        s.close()
    failed = ", ".join(f"{k} {v}" for k, v in errors.items()) or "none"
    return f"connected {len(socks)}: kept {kept}, refused {refused}; connect failures: {failed}"


def slowloris(n, seconds):
    """n clients send a request head one byte every 0.5 s; returns how many herald had closed after `seconds`."""
    socks = []
    for _ in range(n):
        try:
            s = connect(HTTP, timeout=0.5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nx-slow: ")
            socks.append(s)
        except OSError:
            pass
    closed = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(closed) < len(socks):
        for i, s in enumerate(socks):
            if i in closed:
                continue
            try:
                s.sendall(b"a")
                s.setblocking(False)
                try:
                    if s.recv(4096) == b"":
                        closed.add(i)
                except BlockingIOError:
                    pass
                s.setblocking(True)
            except OSError:
                closed.add(i)
        time.sleep(0.5)
    for s in socks:
        s.close()
    return len(socks), len(closed)


watch = Watch()
threads = [threading.Thread(target=watch.run_rss, daemon=True), threading.Thread(target=watch.run_probe, daemon=True)]
for t in threads:
    t.start()
time.sleep(1)
rows = []


def phase(name, fn):
    watch.phase = name
    t0 = time.monotonic()
    result = fn()
    rows.append((name, result, time.monotonic() - t0))
    time.sleep(0.5)


big = tokens_body(0, 1_000_000)
phase(
    "REST request of 1,000,000 tokens (default max_request_size)",
    lambda: "%d %s" % http_post(HTTP, "/api/v1/push", big, send_body=False),
)
phase(
    "REST request of 1,000,000 tokens (max_request_size = 0)",
    lambda: "%d %s" % http_post(HTTP_UNLIMITED, "/api/v1/push", big),
)
del big
phase("MCMT message, 200 recipients x 5,000 push parts", lambda: mcmt_flood(200, 5000))
phase(
    f"connection flood, {args.flood} to HTTP",
    lambda: flood(HTTP, args.flood),
)
phase(
    f"connection flood, {args.flood} to ESMTP",
    lambda: flood(SMTP, args.flood),
)
phase("slowloris, 300 clients for 15 s", lambda: "opened %d, closed by herald %d" % slowloris(300, 15))


def fill():
    accepted = refused = 0
    i = 0
    batch = 100_000
    while accepted < args.queued:
        n = min(batch, args.queued - accepted)
        status, text = http_post(HTTP, "/api/v1/push", tokens_body(10_000_000 + i, n))
        i += n
        if status == 202:
            accepted += n
        else:
            refused += 1
            if refused > 3:
                return f"accepted {accepted}, then {status} {text}"
    status, text = http_post(HTTP, "/api/v1/push", tokens_body(20_000_000, 1))
    return f"accepted {accepted}; one more: {status} {text}"


phase(f"{args.queued} notifications queued through REST", fill)
watch.phase = "idle with the queue full"
time.sleep(3)
rows.append(("idle with the queue full", "RSS now %d MiB" % (rss_kib() // 1024), 3.0))
watch.stop = True
for t in threads:
    t.join()
peak_total = rss_kib("VmHWM")

print("| phase | result | s | peak RSS MiB | slowest probe s | probe failures |")
print("|---|---|---|---|---|---|")
ok = True
for name, result, secs in rows:
    fails = watch.failures.get(name, [])
    ok = ok and not fails
    print(
        f"| {name} | {str(result).replace('|', '/')} | {secs:.1f} | {watch.peak.get(name, 0) // 1024} | "
        f"{watch.worst.get(name, 0.0):.3f} | {len(fails)} {'; '.join(fails[:2])} |"
    )
print()
print(f"peak RSS (VmHWM): {peak_total // 1024} MiB (goal <= 1024)")
print(f"responsive throughout (console `version` and /healthz within 1 s): {'yes' if ok else 'NO'}")
sys.exit(0 if ok and peak_total <= 1024 * 1024 else 1)

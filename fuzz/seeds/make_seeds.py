#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into seeds/<target>/, from the examples of herald's unit and
integration tests (crates/herald/src/inbound/mcmt.rs, smtp/command.rs, rest/template.rs, rest/push.rs,
crates/herald/tests/{smtp,rest,hardening_doors,hardening_fields}.rs, crates/herald-apns/src/payload.rs). Run from
fuzz/: `python3 seeds/make_seeds.py`. The seeds are small and checked in; the corpora the fuzzer grows from them
(corpus/<target>/) are not."""

import base64
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
TOKEN = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


def write(target, items):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    for old in os.listdir(d):
        os.remove(os.path.join(d, old))
    for i, data in enumerate(items):
        if isinstance(data, str):
            data = data.encode()
        with open(os.path.join(d, f"seed-{i:02}"), "wb") as f:
            f.write(data)


def mcmt(parts, boundary="B", head=None):
    m = head or (
        "From: a@example.com\r\nTo: t@apps.example\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/vnd.msys.mcmt; boundary="{boundary}"\r\n\r\n'
    )
    for p in parts:
        m += f"--{boundary}\r\n{p}\r\n"
    return m + f"--{boundary}--\r\n"


inner = 'X-Device-Token: abcd\r\n\r\n{"aps":{}}'
b64 = base64.b64encode(inner.encode()).decode()
json_b64 = base64.b64encode(b'{"aps":{"alert":"x"}}').decode()
apn = "Content-Type: message/vnd.msys.apn\r\n"
MCMT = [
    mcmt([
        "Content-Type: message/rfc822\r\n\r\nSubject: mail\r\n\r\nhello",
        apn + '\r\nX-Device-Token: 123acb90\r\nX-APNs-Topic: com.example.app\r\n\r\n{"aps":{"alert":"You have mail"}}',
    ]),
    mcmt([
        apn + "apns-priority: 5\r\napns-push-type: background\r\napns-expiration: 1700000000\r\n"
        'apns-collapse-id: c1\r\n\r\n{"aps":{"content-available":1}}'
    ]),
    mcmt([apn + "Content-Transfer-Encoding: base64\r\n\r\n" + b64[:10] + "\r\n" + b64[10:]]),
    mcmt([apn + "\r\nX-Device-Token: ab\r\nContent-Transfer-Encoding: base64\r\n\r\n" + json_b64]),
    mcmt([apn + "\r\nX-Device-Token: aa\r\nReturn-Path: <bounce@example.com>\r\n\r\n{\"n\":1}", apn + '\r\n{"n":2}']),
    mcmt([
        "Content-Type: message/rfc822\r\n\r\nSubject: x\r\n\r\nbody",
        apn + "\r\n" + inner,
        apn + "Content-Transfer-Encoding: base64\r\n\r\n" + b64,
    ]),
    mcmt(
        [apn + f"\r\nX-Device-Token: {TOKEN}\r\nX-APNs-Topic: com.example.app.voip\r\nX-APNs-Push-Type: voip\r\n"
         "X-APNs-Priority: 10\r\nX-APNs-Expiration: 0\r\nX-APNs-Collapse-Id: grp\r\n"
         "X-APNs-Id: 123e4567-e89b-12d3-a456-426614174000\r\nX-Binding: b1\r\n\r\n{\"aps\":{\"alert\":\"x\"}}"],
        boundary="=_mcmt_=",
        head="From: sender@example.com\r\nTo: x@apps.example\r\nX-Binding: default\r\nReturn-Path: <r@x>\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/vnd.msys.mcmt; boundary="=_mcmt_="\r\n\r\n',
    ),
    mcmt([apn + "\r\nX-Device-Token: ab\r\n{}"]),
    mcmt([apn + "X-APNs-Priority: high\r\n\r\n{}"]),
    "MIME-Version: 1.0\r\nContent-Type: multipart/vnd.msys.mcmt\r\n\r\nno parts here\r\n",
    "Subject: hi\r\n\r\njust mail\r\n",
    mcmt([
        "Content-Type: multipart/mixed; boundary=C\r\n\r\n--C\r\n" + apn + "\r\n{\"aps\":{}}\r\n--C--",
        apn + "Content-Type: message/vnd.msys.apn; charset=utf-8\r\n\r\n\t{\"aps\":{\"alert\":\"h\u00e9\"}}",
    ]),
]
write("mcmt", MCMT)

write("smtp_command", [
    "ehlo client.example", "HELO x", "QuIt", "NOOP anything", "starttls", "DATA", "RSET", "VRFY x", "HELP",
    "MAIL FROM:<a@b.example> SIZE=1234 BODY=8BITMIME", "mail from: <>", "MAIL FROM:<a@b> SMTPUTF8",
    "MAIL FROM:<a@b> SIZE=big", "MAIL TO:<a@b>", "RCPT TO:<@relay.example:tok@apps.example>",
    "RCPT TO:tok@apps", "RCPT TO:<a@b> NOTIFY=NEVER", "XYZZY", "DATA now", "EHLO", b"\xff",
    "MAIL FROM:<\u00e9@b.example> BODY=7BIT",
])

TEMPLATE_MCMT = (
    "From: <%= :from %>\nTo: <%= :to %>\nSubject: [%= :subject %]\nMIME-Version: 1.0\n"
    "Content-Type: multipart/vnd.msys.mcmt; boundary=MCMT_BOUNDARY\n\n"
    "--MCMT_BOUNDARY\nContent-Type: message/rfc822\n\nFrom: <%= :from %>\n\nmail for [%= :name %]\n"
    "--MCMT_BOUNDARY\nContent-Type: message/vnd.msys.apn\n\nX-Device-Token: <%= :token %>\n\n"
    '{"aps":{"alert":"Hi <%= :Name %>","badge":[%= :badge %]}}\n--MCMT_BOUNDARY--\n'
)
TWO_PARTS = (
    "To: <%= :to %>\nContent-Type: multipart/vnd.msys.mcmt; boundary=B\n\n"
    '--B\nContent-Type: message/vnd.msys.apn\n\nX-Device-Token: <%= :first %>\n\n{"aps":{"alert":"one"}}\n'
    "--B\nContent-Type: message/vnd.msys.apn\n\nX-Device-Token: <%= :second %>\nX-APNs-Priority: 5\n"
    'X-APNs-Collapse-Id: grp\n\n{"aps":{"alert":"two"}}\n--B--\n'
)
PLAIN = (
    "From: a@b\nTo: <%= :to %>\nMIME-Version: 1.0\nContent-Type: multipart/vnd.msys.mcmt; boundary=B\n\n--B\n"
    'Content-Type: message/vnd.msys.apn\n\n\n{"aps":{"alert":"x"}}\n--B--\n'
)
write("template", [
    'To: <%=:to%>\nSubject: [%= :Subject %]\n\n{"a":"<%= :SUBJECT %>"}\0to=x@y\0subject=hi "there"',
    "a <%= b %> [%=:c d%] <%=:e [%= :f",
    "x <%= :Nope %>",
    "a\nb\r\nc\rd\n",
    "<%=:v%>\0v=1\n2",
    TEMPLATE_MCMT + f"\0name=Ann\0badge=3\0token={TOKEN}\0subject=s",
    TWO_PARTS + f"\0first={TOKEN}\0second={TOKEN}",
    PLAIN,
])

PUSH_BODIES = [
    {"domain": "d", "tokens": ["aa"], "payload": {"aps": {"alert": "x"}, "k": 1.50}},
    {"domain": "d", "notifications": [{"token": "aa", "payload": {}}, {"token": 7, "payload": {}}]},
    {"domain": "d", "tokens": ["aa"], "payload": {}, "colapse_id": "x"},
    {"domain": "d", "notifications": [{"payload": {}}]},
    {"domain": "apps.example", "tokens": [TOKEN, "ab" * 31], "payload": {"aps": {"content-available": 1}},
     "topic": "com.example.app", "push_type": "background", "priority": 5, "expiration": 0,
     "collapse_id": "c", "binding": "b1"},
    {"domain": "apps.example", "notifications": [
        {"token": TOKEN, "payload": {"aps": {"alert": {"title": "t", "body": "b", "loc-args": ["a"]}, "badge": 3,
                                             "sound": "default"}},
         "apns_id": "123e4567-e89b-12d3-a456-426614174000", "topic": "com.example.app.push-type.liveactivity",
         "push_type": "liveactivity", "priority": 10, "expiration": 4294967295, "collapse_id": "g"}],
     "topic": "com.example.app"},
]
write("rest_push", [json.dumps(b, separators=(",", ":")) for b in PUSH_BODIES] + ['{"domain":"d",'])

INJECT_BODIES = [
    {"template": TEMPLATE_MCMT, "recipients": [
        {"to": "ignored@apps.example", "from": "sender@example.com",
         "keys": {"NAME": "Ann", "badge": 3, "token": TOKEN, "subject": "s"}, "vctx": {"key": "value"}},
        {"to": f"{TOKEN}@apps.example", "from": "sender@example.com",
         "keys": {"name": "Bob", "badge": "4", "token": "", "subject": "s"}}]},
    {"template": TWO_PARTS, "recipients": [
        {"to": "x@apps.example", "from": "s@example.com", "keys": {"first": TOKEN, "second": TOKEN}}]},
    {"template": PLAIN, "recipients": [{"to": f"{TOKEN}@apps.example"}, {"to": "no-at"}, {}]},
    {"template": PLAIN, "recipients": []},
    {"template": "x", "recipients": [{"to": "a@b", "keys": {"k": None, "l": [1, {"a": True}]}}]},
]
write("rest_inject", [json.dumps(b, separators=(",", ":")) for b in INJECT_BODIES] + ['{"template":7}'])

PAYLOADS = [
    '{"aps":{"alert":"hi"}}',
    '{"aps":{"alert":{"title":"t","body":"b","loc-args":["a"]},"badge":3,"sound":"default"},"x":1}',
    '{"aps":{"badge":0}}',
    '{"aps":{"content-available":1}}',
    '{"aps":{"content-available":1,"alert":"x"}}',
    '{"aps":{"content-available":0}}',
    '{"aps":{}}',
    '{"aps":{"content-available":1,"badge":1}}',
    '{"aps":{"timestamp":1,"event":"start","alert":"x","attributes-type":"A","attributes":{}}}',
    '{"aps":{"timestamp":-5,"event":"end","content-state":[]}}',
    '{"aps":{"sound":{"critical":1,"name":"n","volume":0.5},"interruption-level":"critical",'
    '"relevance-score":0.5,"stale-date":1,"dismissal-date":2,"thread-id":"t","mutable-content":1,'
    '"input-push-token":1,"filter-criteria":"f"}}',
    '{"aps":{"badge":"1"}}',
    '{"a":1,"a":2}',
    '{"aps":{"content-available":1},"aps":{"alert":"x"}}',
    "[1,2.5e3,-0,null,true,\"\\u00e9\\ud83d\\ude00\"]",
    "garbage",
]
# apns_payload: type byte, protocol/priority byte, payload.
write("apns_payload", [bytes([i % 11, (i * 3) % 6]) + p.encode() for i, p in enumerate(PAYLOADS)])
write("apns_infer", PAYLOADS)

HEADERS = [
    ["alert", "10", "com.example.app", "group-1", "123e4567-e89b-12d3-a456-426614174000", "0", TOKEN],
    ["voip", "5", "com.example.app.voip", "x" * 65, "123E4567-E89B-12D3-A456-426614174000", "4294967296",
     TOKEN.upper()],
    ["liveactivity", "1", "com.example.app.push-type.liveactivity", " a", "not-a-uuid", "12x", "abc"],
    ["pushtotalk", "07", "\u00e9.voip-ptt", "ok", "123e4567-E89b-12d3-a456-426614174000", "", "zz"],
]
write("apns_headers", ["\0".join(h) for h in HEADERS])

# binary_frames: a piece-size byte, then notifications in the three formats (docs/apns-protocol.md#binary-command-0,
# #binary-command-1, #binary-command-2), a feedback tuple and an error packet.
import struct

TOKEN_BYTES = bytes.fromhex(TOKEN)
PAYLOAD = b'{"aps":{"alert":"x"}}'


def simple(token=TOKEN_BYTES, payload=PAYLOAD):
    return b"\x00" + struct.pack(">H", len(token)) + token + struct.pack(">H", len(payload)) + payload


def enhanced(ident=7, expiry=0, token=TOKEN_BYTES, payload=PAYLOAD):
    return (b"\x01" + struct.pack(">IIH", ident, expiry, len(token)) + token + struct.pack(">H", len(payload))
            + payload)


def frame(ident=9, expiry=1, priority=10, token=TOKEN_BYTES, payload=PAYLOAD):
    items = (b"\x01" + struct.pack(">H", len(token)) + token + b"\x02" + struct.pack(">H", len(payload)) + payload
             + b"\x03\x00\x04" + struct.pack(">I", ident) + b"\x04\x00\x04" + struct.pack(">I", expiry)
             + b"\x05\x00\x01" + bytes([priority]))
    return b"\x02" + struct.pack(">I", len(items)) + items


write("binary_frames", [
    b"\x00" + simple(),
    b"\x05" + enhanced() + frame(),
    b"\x81" + frame(token=b"\x01" * 8) + simple(),
    b"\x3f" + frame(priority=5) + frame()[:40],
    b"\x01" + struct.pack(">IH", 1700000000, 32) + TOKEN_BYTES,
    b"\x02" + b"\x08\x08\x00\x00\x00\x09",
])

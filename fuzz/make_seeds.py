#!/usr/bin/env python3
"""Writes the hand-made seed inputs of each fuzz target to fuzz/seeds/<target>/ (the committed
corpora in fuzz/corpus/ are these plus what fuzzing found, minimised with -merge=1).
Run from anywhere: python3 fuzz/make_seeds.py"""
import hashlib, os, pathlib, re

ROOT = pathlib.Path(__file__).resolve().parent
REPO = ROOT.parent


def write(target, items):
    d = ROOT / "seeds" / target
    d.mkdir(parents=True, exist_ok=True)
    for data in items:
        if isinstance(data, str):
            data = data.encode()
        (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


REQ = [
    '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}',
    '{"jsonrpc":"2.0","method":"notifications/initialized"}',
    '{"jsonrpc":"2.0","id":"a-1","method":"tools/list"}',
    '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}',
    '{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{}}',
    '{"jsonrpc":"2.0","id":2,"result":{"tools":[]}}',
    '{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}',
    '{"jsonrpc":"2.0","id":1.5e3,"method":"ping"}',
    '{"jsonrpc":"2.0","id":-0,"method":"tools\\/call","params":{"name":"\\u0065cho"}}',
    '{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":{"b":1,"b":2}}}',
    '\ufeff{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
    '[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"d"}}]',
    '[{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}]',
    ' \n{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"offerings/list"}',
    '{"jsonrpc":"2.0","id":"\\ud83d\\ude00","method":"resources/read","params":[1,2]}',
]
write("strict_envelope", [bytes([b]) + r.encode() for b in (0, 3, 7) for r in REQ])

SSE = [
    b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n",
    b"data: a\n\ndata: b\r\n\r\nid: 1\rdata: c\r\rdata: d\r\n\n: ping\n\n",
    b"id: 0\ndata: \n\nevent: message\r\ndata: {\"id\":2,\r\ndata: \"x\":[1]}\r\n\r\n",
    b"retry: 500\n\n: keep-alive\n\ndata: {\"tools\": [\n\n",
    b"{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{\"tools\":[{\"name\":\"echo\"}]}}",
    b"data: " + b"x" * 200 + b"\n\ndata: {\"id\":4}\n\n",
]
write("sse_messages", [bytes([mh, fl]) + seed + s
                       for s in SSE for (mh, fl, seed) in [(64, 0, b"\x01\x00\x00\x00"), (0x84, 0x36, b"\x07\x01\x00\x00"), (16, 0x0d, b"\x00\x00\x00\x00")]])

LEGACY = [
    b"event: endpoint\r\ndata: /messages/?session_id=0123456789abcdef0123456789abcdef\r\n\r\n: ping\r\n\r\n",
    b"event: endpoint\ndata: /message?sessionId=6f1c2a4e-1b2c-4d5e-8f90-1234567890ab\n\nevent: message\ndata: {}\n\n",
    b": hello\n\nevent: endpoint\ndata:/x?session_id=1#frag\n\n",
    b"event: message\ndata: 1\n\ndata: 2",
    b"session_id=mine&session%5Fid=victim",
    b"x=1&sessionId=ab&%73ession_id=cd",
    b"session_id=a%20b&sessionId",
    b"/messages/?session+id=1&session_id=abc_DEF-9",
    b"data: x\r\rdata: y\n\r\n",
]
write("legacy", [seed + s for s in LEGACY for seed in (b"\x00\x00\x00", b"\x05\x01\x00")])

CHUNKED = [
    b"7\r\nevent: \r\n17;ext=1\r\nendpoint\ndata: /m?x=1\n\n\r\n0\r\nX-T: 1\r\n\r\n",
    b"3\r\nabc\r\n0\r\n\r\n",
    b"A;x=\"y\"\nabcdefghij\n0\n\n",
    b"ffffffffffffffffff\r\n",
    b"2\r\nabX",
    b"0000000000000001\r\nz\r\n0\r\n\r\nHTTP/1.1",
]
write("chunked", [seed + s for s in CHUNKED for seed in (b"\x00\x00\x00\x00", b"\x2a\x00\x01\x00")])

HOP = [bytes(range(i, i + 200)) for i in range(0, 50, 10)] + [
    b"\x10" + b"peer-secret-0123456789" + b"\x00" * 8 + b"\x01\x00POST\x00/mcp?x=1\x00sess-1\x00pod-a\x00\x00" * 3,
]
write("hop", HOP)

# configs: the shipped one and the shapes the e2e tests write, with marker secrets
# comments and blank lines dropped: shorter inputs run faster
shipped = "".join(l for l in (REPO / "conf" / "sidecar.yaml").read_text().splitlines(True)
                  if l.strip() and not l.lstrip().startswith("#"))
marked = shipped.replace('"${PEER_SECRET:-}"', "FUZZSECRET-peer-0123456789abcdef").replace(
    '"${ADMIN_TOKEN:-}"', "'FUZZSECRET-admin-0123456789'")
MIN_ROUTE = "routes:\n  - {prefix: /mcp, upstream: 'http://127.0.0.1:8000/mcp', server_name: demo}\n"
CONFIGS = [
    shipped,
    marked,
    "server:\n  listen: 127.0.0.1:18080\n  admin_listen: 127.0.0.1:19090\n  peer_listen: 127.0.0.1:18081\n"
    "redis: {url: 'redis://127.0.0.1:6379'}\npeer: {secret: FUZZSECRET-peer-0123456789}\n"
    "admin: {token: FUZZSECRET-admin-0123456789}\n"
    "auth: {cache_ttl: 1s, keys_file: '/tmp/keys.yaml', token_encryption_key: 'FUZZSECRET-key-00112233445566778899aabbccddeeff0011223344556677'}\n"
    "routes:\n  - prefix: /mcp\n    upstream: 'http://127.0.0.1:8000/mcp'\n    server_name: everything\n    session_mode: shared\n"
    "    auth: required\n    inject_headers:\n      X-MCPHub-GitHub-Token: \"{token.GITHUB_TOKEN}\"\n      X-MCPHub-User-Id: \"{user.id}\"\n"
    "    tool_groups:\n      team: [echo, slow_echo]\n",
    "auth: {keys_file: '/tmp/k.yaml'}\nlimits: {max_batch: 5, max_held_message: 512}\nroutes:\n  - prefix: /mcp\n    upstream: 'http://127.0.0.1:1/mcp'\n    server_name: filtered\n    auth: required\n    tool_groups: {readers: [echo]}\n",
    "clients: {trusted_proxies: ['127.0.0.0/8'], allowed_hosts: [mcp.example.com]}\npeer: {secret: \"FUZZSECRET-${POD_IP}-x\"}\n" + MIN_ROUTE,
    "peer: {secret: 'FUZZSECRET-${unterminated'}\n" + MIN_ROUTE,
    "admin: {token: FUZZSECRET-short}\nserver: {listen: '127.0.0.1:1', admin_listen: '127.0.0.1:1'}\n" + MIN_ROUTE,
    "auth: {token_encryption_key: FUZZSECRET-not-hex}\n" + MIN_ROUTE,
    "peer: {secret: !!str FUZZSECRET-tagged-0123456789}\nredis: {url: 'rediss://x'}\n" + MIN_ROUTE,
    "peer: {secret: 1234567890123456}\n" + MIN_ROUTE,
    "session: {ttl: 0s, heartbeat_interval: 2s, pod_ttl: 1s}\nadmin:\n  token: |\n    FUZZSECRET-block-0123456789\n" + MIN_ROUTE,
]
write("config", CONFIGS)

# modern: "VERSION\0METHOD\0NAME\0BODY" ("-" for an absent header)
META = '"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{"elicitation":{}},"io.modelcontextprotocol/logLevel":"info","progressToken":3}'
MODERN = [
    '2026-07-28\0tools/call\0echo\0{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"},' + META + '}}',
    '2026-07-28\0tools/call\0=?base64?aMOpbGxv?=\0{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"h\\u00e9llo",' + META + '}}',
    '2026-07-28\0resources/read\0test://info\0{"jsonrpc":"2.0","id":"r","method":"resources/read","params":{"uri":"test://info",' + META + '}}',
    '2026-07-28\0prompts/get\0greet\0{"jsonrpc":"2.0","id":2,"method":"prompts/get","params":{"name":"greet","inputResponses":{"k":{"action":"accept"}},"requestState":"mcps1.e30.AAAA",' + META + '}}',
    '2026-07-28\0server/discover\0-\0{"jsonrpc":"2.0","id":3,"method":"server/discover","params":{' + META + '}}',
    '2026-07-28\0subscriptions/listen\0-\0{"jsonrpc":"2.0","id":4,"method":"subscriptions/listen","params":{"notifications":{"toolsListChanged":true,"resourceSubscriptions":["a://1"]}}}',
    '2026-07-28\0-\0-\0{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"x"}}',
    '2030-01-01\0ping\0-\0{"jsonrpc":"2.0","id":5,"method":"ping"}',
    '2025-06-18\0tools/list\0-\0{"jsonrpc":"2.0","id":6,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}',
    'mcps1.eyJwb2QiOiIxIn0.QMtq5eh3bT1xzwqYfgx4qF-Bon-uRFV755nXHi1qQPI',
]
write("modern", MODERN)

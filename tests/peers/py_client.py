"""The official Python MCP client, driven through the sidecar by the integration tests.

Run: python py_client.py --url URL --transport streamable-http|sse [--calls N]
Prints one JSON object describing what the client saw; exits non-zero on any failure.
With --reconnects N a failed session is replaced by a new one (what an application does
after a 404 or a broken stream), up to N times; the calls continue where they stopped.
"""

import argparse
import asyncio
import json
import os
import sys
from datetime import timedelta

from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamablehttp_client

parser = argparse.ArgumentParser()
parser.add_argument("--url", required=True)
parser.add_argument("--transport", default="streamable-http", choices=["streamable-http", "sse"])
parser.add_argument("--calls", type=int, default=1, help="how many add() calls to make")
parser.add_argument("--header", action="append", default=[], help="NAME=VALUE sent on every request")
parser.add_argument("--counts", type=int, default=0, help="how many count() calls to make")
parser.add_argument(
    "--pause-after", type=int, default=-1,
    help="after this many add() calls print PAUSED and wait for --resume-file to exist",
)
parser.add_argument("--resume-file", default="")
parser.add_argument("--call-interval", type=float, default=0, help="seconds between add() calls")
parser.add_argument("--request-timeout", type=float, default=0, help="seconds; 0 = none")
parser.add_argument("--reconnects", type=int, default=0, help="new sessions allowed after failures")
parser.add_argument(
    "--header-rounds",
    type=int,
    default=0,
    help="call request_headers this many times and report the hub headers the upstream saw",
)
args = parser.parse_args()
headers = dict(h.split("=", 1) for h in args.header)
timeout = timedelta(seconds=args.request_timeout) if args.request_timeout else None
results = []
paused = False


async def scenario(session: ClientSession) -> dict:
    global paused
    init = await session.initialize()
    tools = await session.list_tools()
    for i in range(len(results), args.calls):
        if i == args.pause_after and not paused:
            paused = True
            print("PAUSED", flush=True)
            while not os.path.exists(args.resume_file):
                await asyncio.sleep(0.05)
        if args.call_interval and i:
            await asyncio.sleep(args.call_interval)
        r = await session.call_tool("add", {"a": i, "b": 1})
        if r.isError:
            raise RuntimeError(f"add call {i} failed: {r.content}")
        results.append(int(r.content[0].text))
    counts = []
    for _ in range(args.counts):
        r = await session.call_tool("count", {})
        counts.append(int(r.content[0].text))
    header_rounds = []
    for _ in range(args.header_rounds):
        r = await session.call_tool("request_headers", {})
        if r.isError:
            raise RuntimeError(f"request_headers failed: {r.content}")
        seen = json.loads(r.content[0].text)
        header_rounds.append(
            {k: v for k, v in seen.items() if k.startswith("x-mcphub-") or k == "authorization"}
        )
    echo = await session.call_tool("echo", {"text": "héllo ✓"})
    return {
        "header_rounds": header_rounds,
        "server": init.serverInfo.name,
        "protocol_version": init.protocolVersion,
        "tools": sorted(t.name for t in tools.tools),
        "add_results": results,
        "counts": counts,
        "echo": echo.content[0].text,
    }


async def one_session() -> dict:
    if args.transport == "sse":
        async with sse_client(args.url, headers=headers) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=timeout) as session:
                return await scenario(session)
    async with streamablehttp_client(args.url, headers=headers) as (read, write, get_session_id):
        async with ClientSession(read, write, read_timeout_seconds=timeout) as session:
            out = await scenario(session)
            out["session_id"] = get_session_id()
            return out


async def main() -> dict:
    failures = []
    while True:
        try:
            out = await one_session()
            out["reconnects"] = len(failures)
            out["failures"] = failures
            return out
        except Exception as e:
            if len(failures) >= args.reconnects:
                raise
            failures.append(repr(e)[:300])


try:
    print(json.dumps(asyncio.run(asyncio.wait_for(main(), timeout=120))))
except BaseException as e:  # report, including ExceptionGroups from anyio task groups
    print(json.dumps({"error": repr(e)}))
    sys.exit(1)

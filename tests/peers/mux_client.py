"""Many official Python MCP clients in one process, to catch a proxy mixing up their answers.

Run: python mux_client.py URL --clients N --calls K [--header NAME=VALUE ...] [--progress]
                          [--concurrency-per-client C] [--start-barrier]
Each client has its own ClientSession over its own streamable HTTP transport, so its own
Mcp-Session-Id and its own JSON-RPC ids, which start at the same numbers in every client: ids
collide across clients, and a proxy that keys anything on the id alone hands answers to the
wrong client. Client i calls slow_echo (or progress_echo with --progress) K times with the text
"c{i}-r{j}"; an answer with any other text is a mixup. All clients initialize before any of
them calls (always; --start-barrier is accepted for explicitness).
Prints one JSON object describing what the clients saw; exits 0 even with mixups or errors,
non-zero only if the harness itself crashes.
"""

import argparse
import asyncio
import importlib.util
import json
import logging
import ssl
import sys
import time
import warnings
from datetime import timedelta

# httpcore tries `import sniffio` on every request; when it is not installed the failed import
# searches sys.path each time (a large share of the CPU with hundreds of clients). Failing it
# from sys.modules gives the same answer (asyncio) at once.
if importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

parser = argparse.ArgumentParser()
parser.add_argument("url")
parser.add_argument("--clients", type=int, required=True, help="how many concurrent MCP clients")
parser.add_argument("--calls", type=int, required=True, help="tool calls per client")
parser.add_argument("--header", action="append", default=[], help="NAME=VALUE sent on every request")
parser.add_argument("--progress", action="store_true", help="call progress_echo and check its progress")
parser.add_argument(
    "--concurrency-per-client", type=int, default=1, help="calls in flight at once inside one client"
)
parser.add_argument(
    "--start-barrier", action="store_true", help="no-op: clients always wait for all to initialize"
)
parser.add_argument("--timeout", type=float, default=60, help="seconds per HTTP operation and per request")
args = parser.parse_args()
headers = dict(h.split("=", 1) for h in args.header)
window = max(1, args.concurrency_per_client)
tool = "progress_echo" if args.progress else "slow_echo"
LIMIT = 20

# Only warnings and worse from the SDK and httpx; the one JSON object owns stdout.
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
for name in ("mcp", "httpx", "httpcore"):
    logging.getLogger(name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", category=DeprecationWarning)  # streamablehttp_client is deprecated

try:  # N clients need about 2N sockets (a POST connection and the GET stream each)
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
except (ImportError, ValueError, OSError):
    pass


# One TLS context for every client: httpx builds (and loads the CA bundle into) a new one per
# AsyncClient otherwise, about 25 ms of CPU each, which dominates with hundreds of clients.
TLS = ssl.create_default_context()


def http_client(headers=None, timeout=None, auth=None) -> httpx.AsyncClient:
    """The SDK's client, but with room for every call in flight plus the GET stream."""
    kwargs = {
        "verify": TLS,
        "timeout": timeout or httpx.Timeout(args.timeout),
        "limits": httpx.Limits(max_connections=window + 8, max_keepalive_connections=window + 8),
    }
    if headers is not None:
        kwargs["headers"] = headers
    if auth is not None:
        kwargs["auth"] = auth
    return httpx.AsyncClient(**kwargs)


class Tally:
    def __init__(self) -> None:
        self.ok = 0
        self.mixups: list[dict] = []
        self.mixup_count = 0
        self.errors: list[str] = []
        self.error_count = 0
        self.session_ids: set[str] = set()
        self.progress_ok = 0
        self.progress_mismatches: list[dict] = []
        self.initialized = 0
        self.all_initialized = asyncio.Event()

    def error(self, text: str) -> None:
        self.error_count += 1
        if len(self.errors) < LIMIT:
            self.errors.append(text[:500])

    def arrived(self) -> None:
        """One client is ready to call, or has given up; the last one releases everybody."""
        self.initialized += 1
        if self.initialized >= args.clients:
            self.all_initialized.set()


tally = Tally()


def describe(e: BaseException) -> str:
    if isinstance(e, BaseExceptionGroup):
        return f"{type(e).__name__}: " + "; ".join(describe(x) for x in e.exceptions)
    return repr(e)


async def one_call(session: ClientSession, i: int, j: int) -> None:
    sent = f"c{i}-r{j}"
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    try:
        if args.progress:
            r = await session.call_tool(tool, {"text": sent}, progress_callback=on_progress)
        else:
            r = await session.call_tool(tool, {"text": sent})
    except Exception as e:
        tally.error(f"client {i} call {j}: {describe(e)}")
        return
    if r.isError:
        tally.error(f"client {i} call {j}: isError {[getattr(c, 'text', c) for c in r.content]}")
        return
    got = r.content[0].text if r.content and hasattr(r.content[0], "text") else repr(r.content)
    if got == sent:
        tally.ok += 1
    else:
        tally.mixup_count += 1
        if len(tally.mixups) < LIMIT:
            tally.mixups.append({"client": i, "sent": sent, "got": got})
    if args.progress:
        if len(seen) == 3 and all(m == sent for _, _, m in seen) and sorted(p for p, _, _ in seen) == [1, 2, 3]:
            tally.progress_ok += 1
        elif len(tally.progress_mismatches) < LIMIT:
            tally.progress_mismatches.append({"client": i, "sent": sent, "progress": seen})


async def one_client(i: int) -> None:
    ready = False
    try:
        async with streamablehttp_client(
            args.url, headers=headers, timeout=args.timeout, httpx_client_factory=http_client
        ) as (read, write, get_session_id):
            async with ClientSession(read, write, read_timeout_seconds=timedelta(seconds=args.timeout)) as session:
                await session.initialize()
                sid = get_session_id()
                if sid:
                    tally.session_ids.add(sid)
                ready = True
                tally.arrived()
                await tally.all_initialized.wait()
                for start in range(0, args.calls, window):
                    js = range(start, min(start + window, args.calls))
                    await asyncio.gather(*(one_call(session, i, j) for j in js))
    except Exception as e:
        tally.error(f"client {i}: {describe(e)}")
    finally:
        if not ready:
            tally.arrived()


async def main() -> dict:
    started = time.monotonic()
    await asyncio.gather(*(one_client(i) for i in range(args.clients)))
    return {
        "clients": args.clients,
        # Every call the harness set out to make: a client that fails before a call still
        # counts it, so ok == calls means everything went right.
        "calls": args.clients * args.calls,
        "ok": tally.ok,
        "mixups": tally.mixups,
        "mixup_count": tally.mixup_count,
        "errors": tally.errors,
        "error_count": tally.error_count,
        "session_ids": len(tally.session_ids),
        "progress_ok": tally.progress_ok if args.progress else None,
        "progress_mismatches": tally.progress_mismatches if args.progress else None,
        "elapsed_s": round(time.monotonic() - started, 3),
    }


try:
    print(json.dumps(asyncio.run(main())), flush=True)
except BaseException as e:  # the harness itself broke
    print(json.dumps({"error": describe(e)}), flush=True)
    sys.exit(1)

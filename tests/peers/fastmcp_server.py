"""A real FastMCP server (PyPI `mcp`) used as the upstream in the integration tests.

Run: python fastmcp_server.py --port P --transport streamable-http|sse
Tools report what the server saw, so tests assert on the upstream's view, not the proxy's.
"""

import argparse
import asyncio
import json
import random
import time

from mcp import types
from mcp.server.fastmcp import Context, FastMCP
from mcp.shared.message import ServerMessageMetadata
from mcp.types import SamplingMessage, TextContent
from pydantic import BaseModel
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--transport", default="streamable-http", choices=["streamable-http", "sse"])
parser.add_argument("--name", default="test-server")
parser.add_argument("--json-response", action="store_true", help="answer POSTs with JSON, not SSE")
parser.add_argument(
    "--echo-delay", type=float, default=0.05, help="slow_echo sleeps a random 0..SECONDS before answering"
)
parser.add_argument(
    "--capture", default="", help="append every request (head, then body) received to this JSONL file"
)
args = parser.parse_args()


class MemoryEventStore(EventStore):
    """Keeps every event so a client can resume a stream with Last-Event-ID."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, object]] = []  # (event id, stream id, message)

    async def store_event(self, stream_id, message):
        event_id = f"{stream_id}:{len(self.events)}"
        self.events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id, send_callback: EventCallback):
        ids = [e[0] for e in self.events]
        if last_event_id not in ids:
            return None
        stream_id = self.events[ids.index(last_event_id)][1]
        for event_id, sid, message in self.events[ids.index(last_event_id) + 1 :]:
            if sid == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


mcp = FastMCP(
    args.name,
    host=args.host,
    port=args.port,
    log_level="WARNING",
    event_store=MemoryEventStore(),
    json_response=args.json_response,
)
calls_per_session: dict[int, int] = {}


@mcp.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@mcp.tool()
async def slow_echo(text: str) -> str:
    """Return the text unchanged after a random pause of up to --echo-delay seconds, so answers
    to concurrent calls come back out of order."""
    await asyncio.sleep(random.uniform(0, args.echo_delay))
    return text


@mcp.tool()
async def progress_echo(text: str, ctx: Context) -> str:
    """Report progress 3 times (each carrying the text as its message, so the client can tell
    which call a notification belongs to), then return the text unchanged."""
    for i in range(1, 4):
        if i > 1:
            await asyncio.sleep(random.uniform(0, 0.02))
        await ctx.report_progress(i, 3, message=text)
    return text


@mcp.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@mcp.tool()
def whoami(ctx: Context) -> str:
    """This server's name and port (tells the tests which pod answered)."""
    return json.dumps({"server": args.name, "port": args.port})


@mcp.tool()
def count(ctx: Context) -> int:
    """How many times this tool was called in this MCP session (server-side state)."""
    key = id(ctx.session)
    calls_per_session[key] = calls_per_session.get(key, 0) + 1
    return calls_per_session[key]


@mcp.tool()
def request_headers(ctx: Context) -> str:
    """The HTTP headers of the request that carried this call, as the upstream received them."""
    request = ctx.request_context.request
    return json.dumps({k: v for k, v in request.headers.items()}) if request else "{}"


@mcp.tool()
async def timed_events(ctx: Context, count: int = 3, interval: float = 1.0) -> str:
    """Send `count` log notifications `interval` seconds apart, each stamped with the send time."""
    for i in range(count):
        if i:
            await asyncio.sleep(interval)
        await ctx.info(json.dumps({"seq": i, "sent_at": time.time()}))
    return "done"


@mcp.tool()
async def notify_resources_changed(ctx: Context) -> str:
    """Send notifications/resources/list_changed, which travels on the session's GET stream."""
    await ctx.session.send_resource_list_changed()
    return "sent"


class NameForm(BaseModel):
    name: str


@mcp.tool()
async def ask_name(ctx: Context) -> str:
    """Ask the client for a name (elicitation/create), then greet it."""
    answer = await ctx.elicit("What is your name?", schema=NameForm)
    if answer.action != "accept":
        return f"no name: {answer.action}"
    return f"Hello, {answer.data.name}!"


@mcp.tool()
async def summarize(text: str, ctx: Context) -> str:
    """Ask the client's model to summarize the text (sampling/createMessage); return its answer."""
    message = SamplingMessage(role="user", content=TextContent(type="text", text=f"Summarize: {text}"))
    # related to this call, so it travels on the call's own stream (not the session's GET stream)
    result = await ctx.session.create_message(
        messages=[message], max_tokens=50, related_request_id=ctx.request_id
    )
    return getattr(result.content, "text", json.dumps(result.content.model_dump(mode="json")))


@mcp.tool()
async def ask_twice(ctx: Context) -> str:
    """Two server requests in one call: elicit a name, then sample a greeting for it."""
    answer = await ctx.elicit("What is your name?", schema=NameForm)
    if answer.action != "accept":
        return f"no name: {answer.action}"
    message = SamplingMessage(role="user", content=TextContent(type="text", text=f"Greet {answer.data.name}"))
    result = await ctx.session.create_message(
        messages=[message], max_tokens=50, related_request_id=ctx.request_id
    )
    return f"{answer.data.name}: {getattr(result.content, 'text', '?')}"


@mcp.tool()
async def list_roots(ctx: Context) -> str:
    """The client's roots (roots/list), as a JSON list of URIs."""
    # ServerSession.list_roots() cannot relate the request to this call; sent related, it
    # travels on the call's own stream (not the session's GET stream)
    result = await ctx.session.send_request(
        types.ServerRequest(types.ListRootsRequest(method="roots/list")),
        types.ListRootsResult,
        metadata=ServerMessageMetadata(related_request_id=ctx.request_id),
    )
    return json.dumps([str(r.uri) for r in result.roots])


@mcp.tool()
async def list_roots_unrelated(ctx: Context) -> str:
    """The client's roots the way FastMCP 1.x offers it (ServerSession.list_roots()): the
    request relates to no call, so it travels on the session's GET stream."""
    result = await ctx.session.list_roots()
    return json.dumps([str(r.uri) for r in result.roots])


@mcp.tool()
async def log_levels(ctx: Context) -> str:
    """Send one notifications/message at each of debug, info, warning and error."""
    await ctx.debug("log at debug")
    await ctx.info("log at info")
    await ctx.warning("log at warning")
    await ctx.error("log at error")
    return "logged"


long_waits = {"count": 0, "started": 0}


@mcp.tool()
async def long_wait(seconds: float = 30.0) -> str:
    """Sleep; a call cancelled before it ends is counted (see cancelled_calls)."""
    long_waits["started"] += 1
    try:
        await asyncio.sleep(seconds)
    except BaseException:
        long_waits["count"] += 1
        raise
    return "waited"


@mcp.tool()
async def ask_then_wait(ctx: Context, seconds: float = 30.0) -> str:
    """Elicit a name, then wait like long_wait (counted in cancelled_calls when cancelled)."""
    answer = await ctx.elicit("What is your name?", schema=NameForm)
    return await long_wait(seconds) + f" for {getattr(answer.data, 'name', None)}"


@mcp.tool()
def cancelled_calls() -> str:
    """How many long_wait calls this server started ("started") and saw cancelled ("count")."""
    return json.dumps(long_waits)


@mcp.tool()
async def add_tool(name: str, ctx: Context) -> str:
    """Add a tool named NAME (it echoes its text) and send notifications/tools/list_changed."""

    def added(text: str) -> str:
        return text

    mcp.add_tool(added, name=name, description="Added at runtime; echoes.")
    await ctx.session.send_tool_list_changed()
    return f"added {name}"


@mcp.prompt()
def greet(name: str) -> str:
    """A greeting prompt (offerings/list lists it)."""
    return f"Hello, {name}!"


@mcp.resource("test://info")
def info() -> str:
    """A static resource (offerings/list lists it)."""
    return "test server info"


class Capture:
    """ASGI middleware: records what this server received, exactly as it arrived, so tests
    can assert that nothing that must not reach the upstream did."""

    def __init__(self, app, path: str) -> None:
        self.app = app
        self.path = path

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.write(
            {
                "kind": "head",
                "method": scope["method"],
                "path": scope["path"],
                "query": scope["query_string"].decode("latin-1"),
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            }
        )
        chunks: list[bytes] = []

        async def recv():
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    self.write({"kind": "body", "path": scope["path"], "body": b"".join(chunks).decode("latin-1")})
            return message

        return await self.app(scope, recv, send)


@mcp.custom_route("/echo", methods=["GET", "POST", "PUT", "DELETE"])
async def echo_http(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": {k: v for k, v in request.headers.items()},
            "body": body.decode("latin-1"),
        }
    )


@mcp.custom_route("/silent", methods=["GET"])
async def silent_stream(request: Request) -> StreamingResponse:
    """An SSE stream that says one thing, stays completely silent, then says another."""
    seconds = float(request.query_params.get("seconds", "65"))

    async def events():
        yield f"event: first\ndata: {time.time()}\n\n"
        await asyncio.sleep(seconds)
        yield f"event: second\ndata: {time.time()}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@mcp.custom_route("/stalling", methods=["GET"])
async def stalling_stream(request: Request) -> StreamingResponse:
    """An SSE stream whose events arrive in pieces with pauses inside them, as a slow server or
    a congested network delivers them. ?events=N&pause=SECONDS"""
    count = int(request.query_params.get("events", "3"))
    pause = float(request.query_params.get("pause", "0.2"))

    async def events():
        for i in range(count):
            yield f"event: message\ndata: {{\"part\": {i}, "
            await asyncio.sleep(pause)
            yield f"\"whole\": true}}\n"
            await asyncio.sleep(pause)
            yield "\n"
            await asyncio.sleep(pause)

    return StreamingResponse(events(), media_type="text/event-stream")


if __name__ == "__main__":
    if args.capture:
        import uvicorn

        app = mcp.sse_app() if args.transport == "sse" else mcp.streamable_http_app()
        uvicorn.run(Capture(app, args.capture), host=args.host, port=args.port, log_level="warning")
    else:
        mcp.run(transport=args.transport)

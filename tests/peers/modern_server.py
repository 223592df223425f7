"""A real dual-era server built on the Python `mcp` 2.x SDK (MCPServer), the modern-era reference
peer: the modern client drivers are checked against it, independent of the sidecar.

Run: tests/peers/.venv-modern/bin/python tests/peers/modern_server.py --port P
It serves POST /mcp for 2026-07-28 clients (and the legacy handshake for older ones), with the same
tool names as fastmcp_server.py where the two overlap, so a test can run one scenario on both.
"""

import argparse
import asyncio
import json
from typing import Annotated

from pydantic import BaseModel

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.resolve import Elicit, ListRoots, Resolve, Sample
from mcp.types import CreateMessageResult, ListRootsResult, SamplingMessage, TextContent

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--name", default="modern-test-server")
parser.add_argument("--json-response", action="store_true", help="answer POSTs with JSON, not SSE")
args = parser.parse_args()

mcp = MCPServer(args.name, instructions="A modern-era test server.", log_level="WARNING")
cancelled = {"count": 0, "started": 0}


@mcp.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@mcp.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@mcp.tool()
async def progress_echo(text: str, ctx: Context) -> str:
    """Report progress 3 times (message = the text), then return the text."""
    for i in range(1, 4):
        await ctx.report_progress(i, 3, message=text)
    return text


@mcp.tool()
async def log_levels(ctx: Context) -> str:
    """Send one notifications/message at each of debug, info, warning and error."""
    await ctx.debug("log at debug")
    await ctx.info("log at info")
    await ctx.warning("log at warning")
    await ctx.error("log at error")
    return "logged"


class NameForm(BaseModel):
    name: str


def _ask_name() -> Elicit[NameForm]:
    return Elicit("What is your name?", NameForm)


@mcp.tool()
async def ask_name(person: Annotated[NameForm, Resolve(_ask_name)]) -> str:
    """Elicit the user's name, then greet them."""
    return f"Hello, {person.name}!"


def _sample(text: str) -> Sample:
    message = SamplingMessage(role="user", content=TextContent(type="text", text=f"Summarize: {text}"))
    return Sample([message], max_tokens=50)


@mcp.tool()
async def summarize(text: str, sampled: Annotated[CreateMessageResult, Resolve(_sample)]) -> str:
    """Ask the client's model to summarize the text; return what it answered."""
    content = sampled.content
    return getattr(content, "text", json.dumps(content.model_dump(mode="json")))


def _roots() -> ListRoots:
    return ListRoots()


@mcp.tool()
async def list_roots(roots: Annotated[ListRootsResult, Resolve(_roots)]) -> str:
    """The client's roots, as a JSON list of URIs."""
    return json.dumps([str(r.uri) for r in roots.roots])


@mcp.tool()
async def long_wait(seconds: float = 30.0) -> str:
    """Sleep; a call cancelled before it ends is counted (see cancelled_calls)."""
    cancelled["started"] += 1
    try:
        await asyncio.sleep(seconds)
    except BaseException:
        cancelled["count"] += 1
        raise
    return "waited"


@mcp.tool()
def cancelled_calls() -> str:
    """How many long_wait calls were started, and how many were cancelled."""
    return json.dumps(cancelled)


@mcp.tool()
async def add_tool(name: str, ctx: Context) -> str:
    """Add a tool named NAME (it echoes) and announce the tools list change."""

    def added(text: str) -> str:
        return text

    mcp.add_tool(added, name=name, description="Added at runtime; echoes.")
    await ctx.notify_tools_changed()
    return f"added {name}"


@mcp.prompt()
def greet(name: str) -> str:
    """A greeting prompt."""
    return f"Hello, {name}!"


@mcp.resource("test://info")
def info() -> str:
    """A static resource."""
    return "test server info"


if __name__ == "__main__":
    mcp.run(transport="streamable-http", host=args.host, port=args.port, json_response=args.json_response)

"""The official Python MCP 2.x client (`mcp` 2.x, run with tests/peers/.venv-modern) as the e2e tests
drive it against the sidecar's era bridge.

Run: tests/peers/.venv-modern/bin/python tests/peers/modern_client.py URL MODE SCENARIO [ARGS...]
  MODE: pin (mode="2026-07-28"), auto (probe server/discover, fall back to initialize), legacy
  SCENARIO, with optional [TOOL [ARGS_JSON]] to run it on another server's tool:
    basics            tools/list, call echo, resources/read test://info, prompts/get greet
    progress          call progress_echo {"text":"p"} with a progress callback
    logs LEVEL|none   call log_levels with the client's log level set (none: not set)
    elicit            call ask_name; the client accepts with {"name":"Ada"}
    sample            call summarize {"text":"t"}; the client answers "sampled-by-client"
    roots             call list_roots; the client's roots are [file:///client-root]
    listen            open subscriptions/listen (tools list changes), call add_tool, report the
                      notifications received, close the subscription
    cancel            start long_wait {"seconds":30}, abort it after 0.5 s, then read cancelled_calls
    call TOOL ARGS    call any tool, report its text contents
Prints ONE JSON line: {"driver","mode","scenario","ok","protocol_version","server","http":[...],
"error":{code,message,data,http_status}|null, ...scenario fields}. Exits 0 even when the protocol
failed (the test asserts on the JSON); non-zero only when the driver itself crashed.
"""

import asyncio
import json
import sys
import time
import traceback

import anyio

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import (
    CreateMessageResult,
    DiscoverResult,
    ElicitResult,
    Implementation,
    ListRootsResult,
    Root,
    TextContent,
)

ELICITED = {"name": "Ada"}
SAMPLED = "sampled-by-client"
ROOTS = ["file:///client-root"]

url, mode, scenario, *rest = sys.argv[1:]
client_mode = {"pin": "2026-07-28"}.get(mode, mode)
out: dict = {"driver": "py", "mode": mode, "scenario": scenario, "ok": False, "error": None}
http: list = []
out["http"] = http
server_requests: list = []  # elicitation / sampling / roots requests that reached this client
notifications: list = []


def tool_args(default_tool: str, default_args: dict, start: int = 0) -> tuple[str, dict]:
    tool = rest[start] if len(rest) > start else default_tool
    args = json.loads(rest[start + 1]) if len(rest) > start + 1 else default_args
    return tool, args


def texts(result) -> list:
    return [getattr(c, "text", None) for c in result.content]


async def on_response(response) -> None:
    request = response.request
    http.append(
        {
            "method": request.method,
            "mcp_method": request.headers.get("mcp-method"),
            "status": response.status_code,
            "content_type": response.headers.get("content-type"),
        }
    )


async def elicitation(context, params) -> ElicitResult:
    server_requests.append({"method": "elicitation/create", "message": getattr(params, "message", None)})
    return ElicitResult(action="accept", content=ELICITED)


async def sampling(context, params) -> CreateMessageResult:
    first = params.messages[0].content if params.messages else None
    server_requests.append({"method": "sampling/createMessage", "prompt": getattr(first, "text", None)})
    return CreateMessageResult(
        role="assistant", content=TextContent(type="text", text=SAMPLED), model="test-model", stop_reason="endTurn"
    )


async def roots(context) -> ListRootsResult:
    server_requests.append({"method": "roots/list"})
    return ListRootsResult(roots=[Root(uri=u, name="client-root") for u in ROOTS])


async def on_log(params) -> None:
    notifications.append({"method": "notifications/message", "level": params.level, "data": params.data})


async def on_message(message) -> None:
    if isinstance(message, Exception):
        notifications.append({"exception": repr(message)[:300]})
        return
    root = getattr(message, "root", message)
    method = getattr(root, "method", None)
    if method and method != "notifications/message":
        params = getattr(root, "params", None)
        notifications.append(
            {"method": method, "params": params.model_dump(mode="json", by_alias=True) if params else None}
        )


def leaf(e: BaseException) -> BaseException:
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


def record_error(e: BaseException) -> None:
    failed = [h for h in http[-1:] if h["status"] >= 400]
    if isinstance(e, MCPError):
        out["error"] = {
            "code": e.code,
            "message": e.message,
            "data": e.data,
            "http_status": failed[-1]["status"] if failed else None,
        }
    else:
        out["error"] = {
            "kind": type(e).__name__,
            "code": None,
            "message": repr(e)[:500],
            "data": None,
            "http_status": failed[-1]["status"] if failed else None,
        }


async def run_scenario(client: Client) -> None:
    if scenario == "basics":
        if mode == "pin":
            # a pinned client sends no server/discover by itself (it adopts a synthesized one): ask
            d = DiscoverResult.model_validate(await client.session.send_discover("2026-07-28"))
            client.session.adopt(d)
        if client.protocol_version == "2026-07-28":
            d = client.session.discover_result
            out["discover"] = {"supported_versions": d.supported_versions, "ttlMs": d.ttl_ms, "cacheScope": d.cache_scope}
            out["server"] = client.server_info.name if client.server_info else None
        out["instructions"] = client.instructions
        out["capabilities"] = sorted(
            k for k, v in client.server_capabilities.model_dump(exclude_none=True).items() if v is not None
        )
        tools = await client.list_tools()
        out["tools"] = sorted(t.name for t in tools.tools)
        out["echo"] = texts(await client.call_tool("echo", {"text": "héllo ✓"}))[0]
        resource = await client.read_resource("test://info")
        out["resource"] = [getattr(c, "text", None) for c in resource.contents]
        prompt = await client.get_prompt("greet", {"name": "Ada"})
        out["prompt"] = [getattr(m.content, "text", None) for m in prompt.messages]
    elif scenario == "progress":
        tool, args = tool_args("progress_echo", {"text": "p"})
        progress = []

        async def on_progress(p, total, message):
            progress.append({"progress": p, "total": total, "message": message})

        r = await client.call_tool(tool, args, progress_callback=on_progress)
        out["result"], out["is_error"], out["progress"] = texts(r), r.is_error, progress
    elif scenario == "logs":
        tool, args = tool_args("log_levels", {}, 1)
        level = rest[0] if rest else "none"
        if level != "none" and client.protocol_version not in ("2026-07-28",):
            try:  # the legacy era's way to opt in; FastMCP 1.x does not implement it (-32601)
                await client.session.set_logging_level(level)
            except MCPError as e:
                out["set_level_error"] = {"code": e.code, "message": e.message}
        r = await client.call_tool(tool, args)
        await anyio.sleep(0.2)
        out["log_level"], out["result"], out["is_error"] = level, texts(r), r.is_error
        out["logs"] = [n for n in notifications if n.get("method") == "notifications/message"]
    elif scenario in ("elicit", "sample", "roots"):
        default = {"elicit": ("ask_name", {}), "sample": ("summarize", {"text": "t"}), "roots": ("list_roots", {})}
        tool, args = tool_args(*default[scenario])
        r = await client.call_tool(tool, args)
        out["result"], out["is_error"] = texts(r), r.is_error
    elif scenario == "listen":
        tool, args = tool_args("add_tool", {"name": "added_by_listen"})
        events = []
        if client.protocol_version == "2026-07-28":
            async with client.listen(tools_list_changed=True) as sub:
                out["honored"] = sub.honored.model_dump(mode="json", by_alias=True, exclude_none=True)
                r = await client.call_tool(tool, args)
                out["result"], out["is_error"] = texts(r), r.is_error
                with anyio.move_on_after(5):
                    async for event in sub:
                        events.append(type(event).__name__)
                        break
        else:  # a legacy-era connection has no subscriptions/listen: list changes arrive unsolicited
            out["honored"] = None
            r = await client.call_tool(tool, args)
            out["result"], out["is_error"] = texts(r), r.is_error
            for _ in range(50):
                if any(n.get("method") == "notifications/tools/list_changed" for n in notifications):
                    break
                await anyio.sleep(0.1)
        out["events"] = events
        await anyio.sleep(0.3)
        out["tools_after"] = sorted(t.name for t in (await client.list_tools(cache_mode="bypass")).tools)
    elif scenario == "call":  # any tool: call TOOL ARGS_JSON
        tool, args = tool_args("echo", {"text": "x"})
        r = await client.call_tool(tool, args)
        out["result"], out["is_error"] = texts(r), r.is_error
    elif scenario == "cancel":
        tool, args = tool_args("long_wait", {"seconds": 30})
        started = time.monotonic()
        with anyio.move_on_after(0.5) as scope:
            await client.call_tool(tool, args)
        out["aborted"] = scope.cancelled_caught
        out["elapsed"] = round(time.monotonic() - started, 2)
        await anyio.sleep(0.5)
        if len(rest) < 1:  # our own servers count the calls they saw cancelled
            r = await client.call_tool("cancelled_calls", {})
            out["cancelled_calls"] = json.loads(texts(r)[0])
    else:
        raise SystemExit(f"unknown scenario {scenario}")


async def main() -> None:
    http_client = create_mcp_http_client()
    http_client.event_hooks["response"] = [on_response]
    async with http_client:
        client = Client(
            streamable_http_client(url, http_client=http_client),
            mode=client_mode,
            client_info=Implementation(name="sidecar-test-modern-py", version="1.0.0"),
            elicitation_callback=elicitation,
            sampling_callback=sampling,
            list_roots_callback=roots,
            logging_callback=on_log,
            log_level=(rest[0] if scenario == "logs" and rest and rest[0] != "none" else None),
            message_handler=on_message,
            read_timeout_seconds=30,
        )
        try:
            async with client:
                out["protocol_version"] = client.protocol_version
                out["server"] = client.server_info.name if client.server_info else None
                await run_scenario(client)
                out["ok"] = True
        except Exception as e:  # what the client library raised: the protocol failed
            record_error(leaf(e))
    out["server_requests"] = server_requests
    out["notifications"] = notifications


try:
    asyncio.run(asyncio.wait_for(main(), timeout=60))
except BaseException as e:  # a crash of the driver, not a protocol failure
    if isinstance(e, SystemExit):
        raise
    if out.get("error") is None:
        record_error(e)
    out["crash"] = "".join(traceback.format_exception(e))[-2000:]
print(json.dumps(out, default=str))
sys.exit(1 if "crash" in out else 0)

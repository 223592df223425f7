// The official TypeScript MCP client, driven through the sidecar by the integration tests.
// Run: node ts_client.mjs URL streamable|sse [scenario] [sessionId]
//   scenario everything (default): tools of server-everything, then DELETE
//   scenario fastmcp: tools of tests/peers/fastmcp_server.py, session kept open
//   scenario resume: continue the session SESSIONID without initializing (fastmcp tools)
//   scenario sampling: server-everything asks this client to sample; the answer goes back
//   scenario watch: connect, list tools, then stay WATCH_MS (default 4000) counting sampling
//     requests that reach this client (none should: it caused none)
// Prints one JSON object describing what the client saw; exits non-zero on any failure.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { CreateMessageRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const [url, mode, scenario = "everything", sessionId] = process.argv.slice(2);
const transport =
  mode === "sse"
    ? new SSEClientTransport(new URL(url))
    : new StreamableHTTPClientTransport(new URL(url), sessionId ? { sessionId } : undefined);
const client = new Client(
  { name: "sidecar-test-ts", version: "1.0.0" },
  { capabilities: { sampling: {} } },
);
let sampled = 0;
client.setRequestHandler(CreateMessageRequestSchema, async (request) => {
  sampled += 1;
  return {
    model: "test-model",
    role: "assistant",
    content: { type: "text", text: `sampled: ${request.params.messages[0].content.text}` },
  };
});
const timer = setTimeout(() => {
  console.log(JSON.stringify({ error: "timed out" }));
  process.exit(1);
}, 60_000);

const text = (r) => r.content[0].text;

try {
  await client.connect(transport);
  const out = { session_id: transport.sessionId ?? null };
  if (scenario === "everything") {
    const tools = await client.listTools();
    out.server = client.getServerVersion()?.name;
    out.tools = tools.tools.map((t) => t.name).sort();
    out.echo = text(await client.callTool({ name: "echo", arguments: { message: "héllo ✓" } }));
    out.sum = text(await client.callTool({ name: "get-sum", arguments: { a: 2, b: 40 } }));
    if (mode !== "sse") await transport.terminateSession();
  } else if (scenario === "fastmcp" || scenario === "resume") {
    out.sums = [];
    for (let i = 0; i < 5; i++) {
      out.sums.push(Number(text(await client.callTool({ name: "add", arguments: { a: i, b: 100 } }))));
    }
    out.counts = [];
    for (let i = 0; i < 3; i++) {
      out.counts.push(Number(text(await client.callTool({ name: "count", arguments: {} }))));
    }
  } else if (scenario === "sampling") {
    const r = await client.callTool({
      name: "trigger-sampling-request",
      arguments: { prompt: "ping across pods", maxTokens: 10 },
    });
    out.sampled = sampled;
    out.result = JSON.stringify(r.content);
  } else if (scenario === "watch") {
    out.tools = (await client.listTools()).tools.length;
    await new Promise((done) => setTimeout(done, Number(process.env.WATCH_MS ?? 4000)));
    out.sampled = sampled;
  }
  await client.close();
  console.log(JSON.stringify(out));
  clearTimeout(timer);
} catch (e) {
  console.log(JSON.stringify({ error: String(e?.stack ?? e) }));
  process.exit(1);
}

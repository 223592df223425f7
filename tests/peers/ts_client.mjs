// The official TypeScript MCP client, driven through the sidecar by the integration tests.
// Run: node ts_client.mjs URL streamable|sse
// Prints one JSON object describing what the client saw; exits non-zero on any failure.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, mode] = process.argv.slice(2);
const transport =
  mode === "sse"
    ? new SSEClientTransport(new URL(url))
    : new StreamableHTTPClientTransport(new URL(url));
const client = new Client({ name: "sidecar-test-ts", version: "1.0.0" });
const timer = setTimeout(() => {
  console.log(JSON.stringify({ error: "timed out" }));
  process.exit(1);
}, 60_000);

try {
  await client.connect(transport);
  const tools = await client.listTools();
  const names = tools.tools.map((t) => t.name).sort();
  const echo = await client.callTool({ name: "echo", arguments: { message: "héllo ✓" } });
  const sum = await client.callTool({ name: "get-sum", arguments: { a: 2, b: 40 } });
  const out = {
    server: client.getServerVersion()?.name,
    tools: names,
    echo: echo.content[0].text,
    sum: sum.content[0].text,
    session_id: transport.sessionId ?? null,
  };
  if (mode !== "sse") await transport.terminateSession();
  await client.close();
  console.log(JSON.stringify(out));
  clearTimeout(timer);
} catch (e) {
  console.log(JSON.stringify({ error: String(e?.stack ?? e) }));
  process.exit(1);
}

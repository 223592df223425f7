// The official TypeScript MCP client 2.x (@modelcontextprotocol/client) as the e2e tests drive it
// against the sidecar's era bridge.
// Run: node tests/peers/modern_client.mjs URL MODE SCENARIO [ARGS...]
//   MODE: pin ({ pin: '2026-07-28' }), auto (probe server/discover, fall back to initialize), legacy
//   SCENARIO, with optional [TOOL [ARGS_JSON]] to run it on another server's tool:
//     basics            connect info, tools/list, call echo, resources/read test://info, prompts/get greet
//     progress          call progress_echo {"text":"p"} with onprogress
//     logs LEVEL|none   call log_levels; LEVEL goes in _meta io.modelcontextprotocol/logLevel
//                       (modern) or logging/setLevel (legacy era)
//     elicit            call ask_name; the client accepts with {"name":"Ada"}
//     sample            call summarize {"text":"t"}; the client answers "sampled-by-client"
//     roots             call list_roots; the client's roots are [file:///client-root]
//     listen            listen({toolsListChanged}), call add_tool, report the notifications, close
//     cancel            start long_wait {"seconds":30}, abort it after 0.5 s, then read cancelled_calls
//     call TOOL ARGS    call any tool, report its text contents
// Prints ONE JSON line: {"driver","mode","scenario","ok","protocol_version","era","server","http":[...],
// "error":{kind,code,message,data,http_status}|null, ...scenario fields}. Exits 0 even when the
// protocol failed (the test asserts on the JSON); non-zero only when the driver itself crashed.
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";

// stdout carries exactly one JSON line: whatever the SDK prints goes to stderr
for (const level of ["log", "info", "warn", "debug"]) console[level] = (...a) => console.error(...a);

const ELICITED = { name: "Ada" };
const SAMPLED = "sampled-by-client";
const ROOTS = ["file:///client-root"];

const [url, mode, scenario, ...rest] = process.argv.slice(2);
const out = { driver: "ts", mode, scenario, ok: false, error: null };
const http = [];
out.http = http;
const serverRequests = [];
const notifications = [];

const fetchLogged = async (input, init) => {
  const headers = new Headers(init?.headers);
  const response = await fetch(input, init);
  http.push({
    method: init?.method ?? "GET",
    mcp_method: headers.get("mcp-method"),
    status: response.status,
    content_type: response.headers.get("content-type"),
  });
  return response;
};

const toolArgs = (defaultTool, defaultArgs, start = 0) => [
  rest[start] ?? defaultTool,
  rest[start + 1] !== undefined ? JSON.parse(rest[start + 1]) : defaultArgs,
];
const texts = (result) => result.content.map((c) => c.text ?? null);

const negotiation =
  mode === "pin" ? { mode: { pin: "2026-07-28" } } : { mode: mode === "auto" ? "auto" : "legacy" };
const client = new Client(
  { name: "sidecar-test-modern-ts", version: "1.0.0" },
  {
    capabilities: { elicitation: { form: {} }, sampling: {}, roots: { listChanged: true } },
    versionNegotiation: negotiation,
  },
);
client.setRequestHandler("elicitation/create", async (request) => {
  serverRequests.push({ method: "elicitation/create", message: request.params.message ?? null });
  return { action: "accept", content: ELICITED };
});
client.setRequestHandler("sampling/createMessage", async (request) => {
  const first = request.params.messages?.[0]?.content;
  serverRequests.push({ method: "sampling/createMessage", prompt: first?.text ?? null });
  return { model: "test-model", role: "assistant", content: { type: "text", text: SAMPLED }, stopReason: "endTurn" };
});
client.setRequestHandler("roots/list", async () => {
  serverRequests.push({ method: "roots/list" });
  return { roots: ROOTS.map((uri) => ({ uri, name: "client-root" })) };
});
for (const method of [
  "notifications/message",
  "notifications/tools/list_changed",
  "notifications/resources/list_changed",
  "notifications/prompts/list_changed",
  "notifications/resources/updated",
]) {
  client.setNotificationHandler(method, (n) => {
    notifications.push(
      method === "notifications/message"
        ? { method, level: n.params.level, data: n.params.data }
        : { method, params: n.params ?? null },
    );
  });
}

function recordError(e) {
  const last = http.at(-1);
  out.error = {
    kind: e?.constructor?.name ?? typeof e,
    code: e?.code ?? null,
    message: String(e?.message ?? e).slice(0, 500),
    data: e?.data ?? null,
    http_status: e?.status ?? (last && last.status >= 400 ? last.status : null),
  };
}

const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
const modern = () => client.getProtocolEra?.() === "modern";

async function runScenario() {
  if (scenario === "basics") {
    const d = client.getDiscoverResult();
    out.discover = d
      ? { supported_versions: d.supportedVersions, ttlMs: d.ttlMs ?? null, cacheScope: d.cacheScope ?? null }
      : null;
    out.instructions = client.getInstructions() ?? null;
    out.capabilities = Object.keys(client.getServerCapabilities() ?? {}).sort();
    out.tools = (await client.listTools()).tools.map((t) => t.name).sort();
    out.echo = texts(await client.callTool({ name: "echo", arguments: { text: "héllo ✓" } }))[0];
    out.resource = (await client.readResource({ uri: "test://info" })).contents.map((c) => c.text ?? null);
    const prompt = await client.getPrompt({ name: "greet", arguments: { name: "Ada" } });
    out.prompt = prompt.messages.map((m) => m.content.text ?? null);
  } else if (scenario === "progress") {
    const [name, args] = toolArgs("progress_echo", { text: "p" });
    const progress = [];
    const r = await client.callTool(
      { name, arguments: args },
      { onprogress: (p) => progress.push({ progress: p.progress, total: p.total ?? null, message: p.message ?? null }) },
    );
    Object.assign(out, { result: texts(r), is_error: !!r.isError, progress });
  } else if (scenario === "logs") {
    const level = rest[0] ?? "none";
    const [name, args] = toolArgs("log_levels", {}, 1);
    const params = { name, arguments: args };
    if (level !== "none") {
      if (modern()) params._meta = { "io.modelcontextprotocol/logLevel": level };
      else {
        // the legacy era's way to opt in; FastMCP 1.x does not implement it (-32601)
        await client.setLoggingLevel(level).catch((e) => (out.set_level_error = { code: e?.code ?? null, message: String(e?.message ?? e) }));
      }
    }
    const r = await client.callTool(params);
    await sleep(200);
    Object.assign(out, { log_level: level, result: texts(r), is_error: !!r.isError });
    out.logs = notifications.filter((n) => n.method === "notifications/message");
  } else if (["elicit", "sample", "roots"].includes(scenario)) {
    const defaults = { elicit: ["ask_name", {}], sample: ["summarize", { text: "t" }], roots: ["list_roots", {}] };
    const [name, args] = toolArgs(...defaults[scenario]);
    const r = await client.callTool({ name, arguments: args });
    Object.assign(out, { result: texts(r), is_error: !!r.isError });
  } else if (scenario === "listen") {
    const [name, args] = toolArgs("add_tool", { name: "added_by_listen" });
    // a legacy-era connection has no subscriptions/listen: its list changes arrive unsolicited
    const sub = modern() ? await client.listen({ toolsListChanged: true }) : null;
    out.honored = sub ? sub.honoredFilter : null;
    const r = await client.callTool({ name, arguments: args });
    Object.assign(out, { result: texts(r), is_error: !!r.isError });
    for (let i = 0; i < 50 && !notifications.some((n) => n.method === "notifications/tools/list_changed"); i++) {
      await sleep(100);
    }
    if (sub) {
      await sub.close();
      out.closed = await Promise.race([sub.closed, sleep(2000).then(() => "not closed")]);
    }
    await sleep(300);
    out.tools_after = (await client.listTools(undefined, { cacheMode: "bypass" })).tools.map((t) => t.name).sort();
  } else if (scenario === "call") {
    const [name, args] = toolArgs("echo", { text: "x" });
    const r = await client.callTool({ name, arguments: args });
    Object.assign(out, { result: texts(r), is_error: !!r.isError });
  } else if (scenario === "cancel") {
    const [name, args] = toolArgs("long_wait", { seconds: 30 });
    const controller = new AbortController();
    const started = Date.now();
    setTimeout(() => controller.abort("test aborts"), 500);
    try {
      await client.callTool({ name, arguments: args }, { signal: controller.signal });
      out.aborted = false;
    } catch (e) {
      out.aborted = controller.signal.aborted;
      out.abort_error = String(e?.message ?? e).slice(0, 200);
    }
    out.elapsed = (Date.now() - started) / 1000;
    await sleep(500);
    if (rest.length === 0) out.cancelled_calls = JSON.parse(texts(await client.callTool({ name: "cancelled_calls", arguments: {} }))[0]);
  } else {
    throw new Error(`unknown scenario ${scenario}`);
  }
}

const timer = setTimeout(() => {
  out.error = out.error ?? { kind: "Timeout", code: null, message: "driver timed out", data: null, http_status: null };
  finish(0);
}, 60_000);

function finish(code) {
  clearTimeout(timer);
  out.server_requests = serverRequests;
  out.notifications = notifications;
  process.stdout.write(JSON.stringify(out) + "\n", () => process.exit(code));
}

try {
  const transport = new StreamableHTTPClientTransport(new URL(url), { fetch: fetchLogged });
  try {
    await client.connect(transport);
    out.protocol_version = client.getNegotiatedProtocolVersion() ?? null;
    out.era = client.getProtocolEra?.() ?? null;
    out.server = client.getServerVersion()?.name ?? null;
    await runScenario();
    out.ok = true;
  } catch (e) {
    recordError(e); // what the client library raised: the protocol failed
  }
  await client.close().catch(() => {});
  finish(0);
} catch (e) {
  out.crash = String(e?.stack ?? e);
  finish(1);
}

// A fast legacy MCP upstream for the era-bridge benchmark (bench/eras.sh): answers POST /mcp
// with JSON (never SSE). `initialize` opens a session (a fresh Mcp-Session-Id), notifications
// and responses get 202, any other request gets a fixed tools/call result under its own id.
// Node's http module on one core: far faster than a Python MCP server, so the proxy's cost
// shows. Loopback only.
import http from "node:http";
import { randomUUID } from "node:crypto";

const port = Number(process.argv[2]);
const RESULT = { content: [{ type: "text", text: "ok" }] };

http
  .createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      let msg;
      try {
        msg = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch {
        res.writeHead(400).end();
        return;
      }
      if (msg.id === undefined || msg.method === undefined) {
        res.writeHead(202).end();
        return;
      }
      const headers = { "content-type": "application/json" };
      let result = RESULT;
      if (msg.method === "initialize") {
        headers["mcp-session-id"] = randomUUID().replaceAll("-", "");
        result = {
          protocolVersion: msg.params?.protocolVersion ?? "2025-06-18",
          capabilities: { tools: {} },
          serverInfo: { name: "echo-upstream", version: "1" },
        };
      }
      const body = JSON.stringify({ jsonrpc: "2.0", id: msg.id, result });
      headers["content-length"] = Buffer.byteLength(body);
      res.writeHead(200, headers).end(body);
    });
  })
  .listen(port, "127.0.0.1");

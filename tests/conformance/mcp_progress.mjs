// MCP from TypeScript's SDK: calls consult_panel with a progress token and prints the progress notifications and the
// result as one JSON line. The conformance suite's progress scenario calls a fixture tool of its reference server;
// this is the same check on our own tool. Usage: node mcp_progress.mjs <mcp url> <task>
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, task] = process.argv.slice(2);
const client = new Client({ name: "conclave-conformance", version: "1.0.0" });
await client.connect(new StreamableHTTPClientTransport(new URL(url)));
const progress = [];
const result = await client.callTool({ name: "consult_panel", arguments: { task } }, undefined,
  { onprogress: (notification) => progress.push(notification), timeout: 600_000 });
console.log(JSON.stringify({ protocolVersion: client.getNegotiatedProtocolVersion?.(), progress, result }));
await client.close();

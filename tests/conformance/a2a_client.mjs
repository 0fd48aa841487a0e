// A2A 1.0 from another implementation: @a2a-js/sdk's client against one Conclave service. Resolves the agent card,
// sends a message blocking and streamed, reads the task back, continues its context, and cancels a task started
// without waiting. Prints one JSON report on stdout; tests/conformance/test_conformance.py judges it.
// Usage: node a2a_client.mjs <base url> <question> <follow-up> [bearer token]
import { randomUUID } from "node:crypto";
import { Role, TaskState } from "@a2a-js/sdk";
import { AgentCardResolver, ClientFactory } from "@a2a-js/sdk/client";

const [baseUrl, question, followUp, token] = process.argv.slice(2);
const card = await AgentCardResolver.default.resolve(baseUrl);  // /.well-known/agent-card.json
const client = await new ClientFactory().createFromAgentCard(card);
const auth = token ? { serviceParameters: { Authorization: `Bearer ${token}` } } : undefined;

const message = (text, contextId = "") => ({
  messageId: randomUUID(), contextId, taskId: "", role: Role.ROLE_USER, extensions: [], referenceTaskIds: [],
  metadata: undefined, parts: [{ content: { $case: "text", value: text }, metadata: undefined, filename: "", mediaType: "" }],
});
const request = (text, contextId, returnImmediately = false) => ({
  tenant: "", metadata: undefined, message: message(text, contextId),
  configuration: { acceptedOutputModes: ["text/plain"], taskPushNotificationConfig: undefined, returnImmediately },
});
const textOf = (parts) => parts.map((p) => (p.content?.$case === "text" ? p.content.value : "")).join("");
const answerOf = (task) => task.artifacts.map((a) => textOf(a.parts)).join("");
const state = (status) => TaskState[status?.state];
const summary = (task) => ({ id: task.id, contextId: task.contextId, state: state(task.status),
                             answer: answerOf(task), history: task.history.length });

const report = {};
report.card = { name: card.name, interfaces: card.supportedInterfaces.map((i) => [i.protocolBinding,
  i.protocolVersion, i.url]), streaming: card.capabilities?.streaming ?? false };

const blocking = await client.sendMessage(request(question), auth);
report.blocking = summary(blocking);

const streamed = { kinds: [], statuses: [], answer: "", final: undefined };
for await (const event of client.sendMessageStream(request(question), auth)) {
  const { $case: kind, value } = event.payload;
  streamed.kinds.push(kind);
  if (kind === "statusUpdate") {
    streamed.final = state(value.status);
    if (value.status?.message) streamed.statuses.push(textOf(value.status.message.parts));
  } else if (kind === "artifactUpdate") {
    streamed.answer += textOf(value.artifact.parts);
  }
}
report.streamed = streamed;

report.got = summary(await client.getTask({ tenant: "", id: blocking.id, historyLength: undefined }, auth));
report.continued = summary(await client.sendMessage(request(followUp, blocking.contextId), auth));

const started = await client.sendMessage(request(question, "", true), auth);
const canceled = await client.cancelTask({ tenant: "", id: started.id, metadata: undefined }, auth);
report.cancel = { started: state(started.status), canceled: state(canceled.status),
  after: state((await client.getTask({ tenant: "", id: started.id, historyLength: undefined }, auth)).status) };

try {
  await client.getTask({ tenant: "", id: "no-such-task", historyLength: undefined }, auth);
  report.missing = "found";
} catch (error) {
  report.missing = error.constructor.name;
}
console.log(JSON.stringify(report));

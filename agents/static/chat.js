// The expert's chat page (agents/static/chat.html).
"use strict";
const $ = (id) => document.getElementById(id);
const SESSION_KEY = `conclave-session-${location.port}`;
let session = localStorage.getItem(SESSION_KEY) || newSessionId();

function newSessionId() {
  const id = `web-${Math.random().toString(36).slice(2, 10)}`;
  localStorage.setItem(SESSION_KEY, id);
  return id;
}

function message(role, text) {
  const el = Conclave.h("div", { className: `msg ${role}` }, text);  // text, never HTML
  $("conversation").appendChild(el);
  el.scrollIntoView({ block: "end" });
  return el;
}

async function loadHistory() {
  $("session").textContent = session;
  $("conversation").replaceChildren();
  const resp = await Conclave.api(`/sessions/${encodeURIComponent(session)}`);
  if (!resp.ok) return;
  for (const turn of (await resp.json()).turns) message(turn.role, turn.content);
}

async function loadCard() {
  const resp = await Conclave.api("/.well-known/agent-card.json");
  if (!resp.ok) return;
  const card = await resp.json();
  $("name").textContent = card.name;
  $("description").textContent = card.description;
  document.title = `${card.name} — Conclave`;
}

// The passages the answer drew on; [n] in the answer is source n.
function sourceList(sources) {
  const h = Conclave.h;
  return h("details", { className: "sources" },
    h("summary", {}, `Sources (${sources.filter((s) => s.cited).length} cited of ${sources.length})`),
    h("ol", {}, sources.map((s) => h("li", {},
      h("strong", {}, s.title),
      h("span", { className: "sub" },
        ` · ${s.cited ? "cited" : "not cited"} · similarity ${s.score.toFixed(2)} · ${s.document}#${s.chunk}`),
      h("div", { className: "sub" }, s.text)))));
}

async function send() {
  const intent = $("intent").value.trim();
  if (!intent || $("send").disabled) return;
  $("intent").value = "";
  $("send").disabled = true;
  message("user", intent);
  const reply = message("assistant", "…");
  let text = "";
  try {
    await Conclave.stream("/chat", {
      intent, session_id: session, stream: true,
      max_new_tokens: Number($("tokens").value), max_history_length: Number($("history").value),
    }, (event, data) => {
      if (event === "delta") { text += data.delta; reply.textContent = text; }
      else if (event === "done") {
        reply.textContent = data.response;
        reply.title = `${data.elapsed_ms} ms`;
        if (data.sources.length) reply.after(sourceList(data.sources));
      }
      else if (event === "error") { reply.className = "msg error"; reply.textContent = data.error.message; }
    });
  } catch (e) {
    reply.className = "msg error";
    reply.textContent = e.message;
  } finally {
    $("send").disabled = false;
    $("intent").focus();
  }
}

for (const id of ["tokens", "history"]) {
  $(id).addEventListener("input", () => { $(`${id}-out`).textContent = $(id).value; });
}
$("send").addEventListener("click", send);
$("intent").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); send(); }
});
$("clear").addEventListener("click", async () => {
  await Conclave.api(`/sessions/${encodeURIComponent(session)}`, { method: "DELETE" });
  loadHistory();
});
$("new-session").addEventListener("click", () => { session = newSessionId(); loadHistory(); });
Conclave.waitReady($("banner"), () => { $("send").disabled = false; });
loadCard();
loadHistory();

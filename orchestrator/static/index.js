// The orchestrator's page (orchestrator/static/index.html): ask the panel, watch the trace live, browse past runs.
// Everything is built as DOM nodes; text from tasks, experts and runs is never parsed as HTML, and Markdown goes
// through Conclave.markdown (marked, then DOMPurify).
"use strict";
const $ = (id) => document.getElementById(id);
const h = Conclave.h;

async function refreshExperts() {
  try {
    const resp = await Conclave.api("/experts");
    if (!resp.ok) return;
    const { experts } = await resp.json();
    $("experts").replaceChildren(...experts.flatMap((e) => [
      h("span", { className: `pill ${e.ready ? "up" : "down"}`, title: `${e.url} ${e.detail}` },
        `${e.name}: ${e.ready ? "ready" : "down"}`), " "]));
  } catch (e) { /* shown as stale; the banner reports reachability */ }
}

function reasonNote(reason) {
  return reason ? [" ", h("span", { className: "sub" }, `(${reason})`)] : [];
}

// One consultation: who was asked, why, with what, and the answer (or the failure).
function stepNode(step, index) {
  const failed = !step.ok;
  return h("div", { className: `step${failed ? " failed" : ""}`, id: index === undefined ? undefined : `step-${index}` },
    step.thought ? h("div", { className: "thought" }, step.thought) : null,
    h("div", {}, "Consulted ", h("strong", {}, step.expert), reasonNote(step.reason), ": ", h("q", {}, step.input)),
    h("details", { open: failed },
      h("summary", {}, `${failed ? "failed" : "answer"} · ${step.elapsed_ms} ms`),
      h("div", { className: failed ? "error" : "" }, Conclave.markdown(step.observation))));
}

function consultingNode(data) {
  return h("div", { className: "step" },
    data.thought ? h("div", { className: "thought" }, data.thought) : null,
    h("div", {}, "Consulting ", h("strong", {}, data.expert), reasonNote(data.reason), ": ", h("q", {}, data.input),
      " …"));
}

function stepLink(expert, step) {
  return h("a", { href: `#step-${step}` }, expert);
}

// The final answer, how it was composed, and who said what (each sentence links to the steps it came from).
function answerNode(run) {
  const how = run.merge === "generated" ? "merged by the panel's chair and checked against the experts' answers"
    : run.merge === "extractive" ? "the experts' own sentences" + (run.checks?.why ? ` (${run.checks.why})` : "")
    : "no expert answered";
  const leftOut = run.checks?.left_out || [];
  const said = (run.attribution || []).map((a) => h("li", {}, a.text, " ",
    h("span", { className: "sub" }, "— ", a.experts.flatMap((e, i) => [i ? ", " : "", stepLink(e, a.steps[i])]))));
  const cited = (run.sources || []).map((s) => h("li", {}, h("strong", {}, s.title), " ",
    h("span", { className: "sub" }, "· from ", stepLink(s.expert, s.step), ` · similarity ${s.score.toFixed(2)}`),
    h("div", { className: "sub" }, s.text)));
  return h("div", { className: "step answer" },
    h("strong", {}, "Answer"), " ", h("span", { className: "sub" }, `(${how})`),
    Conclave.markdown(run.response || run.error || ""),
    cited.length ? h("details", { className: "sources", open: true }, h("summary", {}, "Sources"), h("ol", {}, cited))
      : null,
    said.length ? h("details", { className: "attribution" }, h("summary", {}, "Who said what"), h("ul", {}, said))
      : null,
    leftOut.length ? h("div", { className: "sub" }, `Left out as off-topic: ${leftOut.join(", ")}`) : null,
    run.elapsed_ms ? h("div", { className: "sub" }, `${run.elapsed_ms} ms · run ${run.run_id}`) : null);
}

function tokens(u) {
  return u && (u.input_tokens || u.output_tokens) ? ` · ${u.input_tokens} in, ${u.output_tokens} out` : "";
}

function cost(u) {
  return u && u.cost != null ? ` · cost ${u.cost.toFixed(6)}` : "";
}

// Where the run's time went: one lane per consultation, placed at its start (lanes that overlap ran in parallel,
// the others in series), then the composition; each with its time and tokens. Bars are positioned through the
// CSSOM, which the page's Content-Security-Policy allows (no inline style).
function timelineNode(run) {
  const total = Math.max(run.elapsed_ms || 1, 1);
  const lane = (label, start, ms, figures, kind) => {
    const bar = h("div", { className: `bar ${kind}`, title: `${label}: ${ms} ms from ${start} ms` });
    bar.style.left = `${(100 * start) / total}%`;
    bar.style.width = `${(100 * ms) / total}%`;
    return h("div", { className: "lane" }, h("span", {}, label), h("div", { className: "track" }, bar),
      h("span", { className: "figures" }, `${ms} ms${figures}`));
  };
  const steps = (run.steps || []).filter((s) => s.expert);
  const lanes = steps.map((s) => lane(s.expert, s.started_ms || 0, s.elapsed_ms, tokens(s.usage && {
    input_tokens: s.usage.prompt_tokens, output_tokens: s.usage.completion_tokens }), s.ok ? "" : "failed"));
  if (run.synthesis_ms) {
    lanes.push(lane("compose", Math.max(total - run.synthesis_ms, 0), run.synthesis_ms,
      tokens(run.usage?.orchestrator), "compose"));
  }
  const sum = run.usage?.total;
  return h("details", { className: "timeline", open: true },
    h("summary", {}, `Timeline · ${total} ms${tokens(sum)}${cost(sum)}`), lanes);
}

function taskNode(task) {
  return h("div", {}, h("strong", {}, "Task:"), " ", task || "");
}

function errorNode(message) {
  return h("div", { className: "error" }, message);
}

function renderRun(run) {
  $("trace").replaceChildren(h("div", { className: "card" }, taskNode(run.task),
    run.steps.map((s, i) => stepNode(s, i)), answerNode(run), timelineNode(run)));
}

async function refreshRuns() {
  const resp = await Conclave.api("/runs?limit=20");
  if (!resp.ok) return;
  const { runs } = await resp.json();
  $("runs").replaceChildren(...runs.map((r) => h("li", { "data-id": r.run_id },
    `${new Date(r.created_at * 1000).toLocaleString()} · ${r.strategy} · ${r.status} · ${r.elapsed_ms} ms`
    + `${tokens(r.usage?.total)}${cost(r.usage?.total)} — ${r.task.slice(0, 90)}`)));
}

$("runs").addEventListener("click", async (ev) => {
  const id = ev.target.closest("li")?.dataset.id;
  if (!id) return;
  const resp = await Conclave.api(`/runs/${encodeURIComponent(id)}`);
  if (resp.ok) renderRun(await resp.json());
});

async function send() {
  const task = $("task").value.trim();
  if (!task || $("send").disabled) return;
  $("send").disabled = true;
  $("status").textContent = "Working…";
  const live = h("div", { className: "card", id: "live" }, taskNode(task));
  $("trace").replaceChildren(live);
  const pending = {};  // expert name -> its "consulting…" line, replaced by the step when the answer comes
  let steps = 0;
  try {
    await Conclave.stream("/integrate", { task, strategy: $("strategy").value, stream: true }, (event, data) => {
      if (event === "start") {
        const ranking = (data.ranking || []).map((r) => `${r.expert} ${r.score.toFixed(2)}`).join(", ");
        live.append(h("div", { className: "sub" }, `Ranking: ${ranking}`));
      } else if (event === "action") {
        pending[data.expert] = consultingNode(data);
        live.append(pending[data.expert]);
      } else if (event === "observation") {
        const node = stepNode(data, steps++);
        if (pending[data.expert]) pending[data.expert].replaceWith(node);
        else live.append(node);
        delete pending[data.expert];
      } else if (event === "final") {
        live.append(answerNode(data), timelineNode(data));
      } else if (event === "error") {
        live.append(errorNode(data.error.message));
      }
    });
  } catch (e) {
    live.append(errorNode(e.message));
  } finally {
    $("status").textContent = "";
    $("send").disabled = false;
    refreshRuns();
    refreshExperts();
  }
}

$("send").addEventListener("click", send);
$("task").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); send(); }
});
Conclave.waitReady($("banner"), () => { $("send").disabled = false; });
refreshExperts();
refreshRuns();
setInterval(refreshExperts, 15000);

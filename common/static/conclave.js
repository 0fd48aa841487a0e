// Shared by both Conclave pages: authenticated fetch, server-sent events over fetch, safe Markdown.
"use strict";

const Conclave = (() => {
  const KEY = "conclave-api-key";

  function headers(extra = {}) {
    const key = localStorage.getItem(KEY);
    return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
  }

  // fetch with the stored API key; on 401 ask for the key once and retry.
  async function api(path, options = {}) {
    let resp = await fetch(path, { ...options, headers: headers(options.headers || {}) });
    if (resp.status === 401) {
      const key = window.prompt("This server needs an API key:");
      if (key) {
        localStorage.setItem(KEY, key);
        resp = await fetch(path, { ...options, headers: headers(options.headers || {}) });
      }
    }
    return resp;
  }

  async function errorMessage(resp) {
    try {
      const body = await resp.json();
      return (body.error && body.error.message) || `HTTP ${resp.status}`;
    } catch (e) {
      return `HTTP ${resp.status}`;
    }
  }

  // POST a JSON body and call onEvent(event, data) for each server-sent event as it arrives.
  async function stream(path, body, onEvent) {
    const resp = await api(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!resp.ok) throw new Error(await errorMessage(resp));
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) event = line.slice(7);
          else if (line.startsWith("data: ")) data.push(line.slice(6));
        }
        const text = data.join("\n");
        let parsed = text;
        try { parsed = JSON.parse(text); } catch (e) { /* plain text such as [DONE] */ }
        onEvent(event, parsed);
      }
    }
  }

  function escapeHtml(text) {
    return String(text)
      .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }

  // Markdown on already-escaped text: whatever HTML an expert or a task contains is shown, never run.
  function markdown(text) {
    const inline = (s) => s
      .replace(/`([^`]+)`/g, "<code>$1</code>")
      .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[^*])\*([^*\n]+)\*/g, "$1<em>$2</em>");
    const out = [];
    let list = null;
    const closeList = () => { if (list) { out.push(`</${list}>`); list = null; } };
    for (const raw of escapeHtml(text).split("\n")) {
      const line = raw.trimEnd();
      let m;
      if ((m = line.match(/^(#{1,4})\s+(.*)$/))) {
        closeList();
        out.push(`<h${m[1].length + 2}>${inline(m[2])}</h${m[1].length + 2}>`);
      } else if ((m = line.match(/^\s*[-*]\s+(.*)$/)) || (m = line.match(/^\s*\d+[.)]\s+(.*)$/))) {
        const kind = /^\s*\d/.test(line) ? "ol" : "ul";
        if (list !== kind) { closeList(); out.push(`<${kind}>`); list = kind; }
        out.push(`<li>${inline(m[1])}</li>`);
      } else if (line === "") {
        closeList();
      } else {
        closeList();
        out.push(`<p>${inline(line)}</p>`);
      }
    }
    closeList();
    return out.join("\n");
  }

  // Poll /ready until it answers 200; show `banner` meanwhile and call onReady once.
  function waitReady(banner, onReady) {
    const check = async () => {
      try {
        const resp = await api("/ready");
        if (resp.ok) { banner.hidden = true; onReady(); return; }
        banner.textContent = `Not ready yet: ${await errorMessage(resp)}. Retrying…`;
      } catch (e) {
        banner.textContent = "Server unreachable. Retrying…";
      }
      banner.hidden = false;
      setTimeout(check, 2000);
    };
    check();
  }

  return { api, stream, escapeHtml, markdown, errorMessage, waitReady };
})();

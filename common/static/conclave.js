// Shared by both Conclave pages: authenticated fetch, server-sent events over fetch, DOM building, safe Markdown.
// Loaded as a file (the pages run under a Content-Security-Policy that allows no inline script).
"use strict";

const Conclave = (() => {
  const KEY = "conclave-api-key";
  // The key lives for this browser tab's session only (sessionStorage), and the page offers to forget it.
  const keys = window.sessionStorage;

  function headers(extra = {}) {
    const key = keys.getItem(KEY);
    return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
  }

  // fetch with the stored API key; on 401 ask for the key once and retry.
  async function api(path, options = {}) {
    let resp = await fetch(path, { ...options, headers: headers(options.headers || {}) });
    if (resp.status === 401) {
      const key = window.prompt("This server needs an API key:");
      if (key) {
        keys.setItem(KEY, key);
        showForget();
        resp = await fetch(path, { ...options, headers: headers(options.headers || {}) });
      }
    }
    return resp;
  }

  // A "Forget key" button (id forget-key) shows while a key is kept.
  function showForget() {
    const button = document.getElementById("forget-key");
    if (button) button.hidden = !keys.getItem(KEY);
  }

  function forgetKey() {
    keys.removeItem(KEY);
    showForget();
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

  // An element built as DOM nodes: h("a", {href: "#x", className: "sub"}, "text", child, ...). Strings become text
  // nodes, never HTML, so whatever an expert or a task contains is shown as written.
  function h(tag, props = {}, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (name in el) el[name] = value;
      else el.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  // Markdown rendered by marked and sanitised by DOMPurify (both vendored under /static/vendor/): a fragment of
  // safe nodes, scripts, event handlers and javascript: links removed.
  function markdown(text) {
    const html = marked.parse(String(text || ""), { async: false, gfm: true, breaks: false });
    return DOMPurify.sanitize(html, { RETURN_DOM_FRAGMENT: true, USE_PROFILES: { html: true } });
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

  document.addEventListener("DOMContentLoaded", () => {
    const button = document.getElementById("forget-key");
    if (button) button.addEventListener("click", forgetKey);
    showForget();
  });

  return { api, stream, h, markdown, errorMessage, waitReady, forgetKey };
})();

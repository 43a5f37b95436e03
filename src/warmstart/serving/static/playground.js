// The playground: /info says what the model serves, and each route it lists gets a tab. Chat streams
// through /v1/chat/completions (server-sent events); the other tabs post to the server's own routes.
// Text from the model is always set as text (never as HTML). The key lives in this browser only.
"use strict";

const KEY = "warmstart.apiKey";
const TABS = [
  // [route in /info, tab id, title]: the order the tabs appear in
  ["/generate", "chat", "Chat"],
  ["/predict", "predict", "Classify"],
  ["/tag", "tag", "Tag"],
  ["/answer", "answer", "Answer"],
  ["/rerank", "rerank", "Rerank"],
  ["/zeroshot", "zeroshot", "Zero-shot"],
  ["/embed", "embed", "Embed"],
];
const $ = (id) => document.getElementById(id);
let info = null;
let history = []; // the chat so far: {role, content}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function status(message, error = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", error);
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = localStorage.getItem(KEY);
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// The server's errors are {"error": sentence} on its own routes, {"error": {message}} on /v1/.
async function failure(response) {
  let message = response.statusText;
  try {
    const body = await response.json();
    message = typeof body.error === "string" ? body.error : (body.error?.message ?? message);
  } catch (_) { /* not JSON: keep the status text */ }
  return new Error(`${response.status}: ${message}`);
}

async function call(path, body) {
  const response = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers: headers(),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

const lines = (id) => $(id).value.split("\n").map((s) => s.trim()).filter(Boolean);
const pct = (x) => `${(100 * x).toFixed(1)}%`;

function bars(scores) {
  const grid = el("div", { class: "bars" });
  for (const [name, value] of Object.entries(scores).sort((a, b) => b[1] - a[1])) {
    const width = Math.max(0, Math.min(1, value));
    grid.append(
      el("span", {}, name),
      el("span", {}, el("div", { class: "bar", style: `width:${(100 * width).toFixed(1)}%` })),
      el("span", { class: "score" }, pct(value)),
    );
  }
  return grid;
}

function busy(button, on) {
  button.disabled = on;
  if (on) status("working…");
}

// A form: read the inputs, post, show the result; errors go to the status line.
function wire(id, run) {
  const button = $(`${id}-send`);
  button.addEventListener("click", async () => {
    busy(button, true);
    try {
      $(`${id}-output`).replaceChildren(...(await run()));
      status("");
    } catch (e) {
      status(e.message, true);
    } finally {
      busy(button, false);
    }
  });
}

wire("predict", async () => {
  const texts = lines("predict-input");
  const out = await call("/predict", { texts });
  return out.predictions.map((p, i) => {
    const head = p.label !== undefined ? [el("span", { class: "label" }, p.label), ` ${pct(p.score)}`]
      : p.labels !== undefined ? [el("span", { class: "label" }, p.labels.join(", ") || "(no label)")]
      : [el("span", { class: "label" }, p.value !== undefined ? p.value.toFixed(4) : JSON.stringify(p.values))];
    const scores = p.probabilities ?? p.scores;
    return el("div", { class: "result" }, el("div", { class: "text" }, texts[i]),
      el("div", {}, ...head), scores ? bars(scores) : "");
  });
});

// A text with its spans marked: [{start, end, label}] over the text as sent.
function marked(text, spans) {
  const node = el("div", { class: "text" });
  let at = 0;
  for (const s of [...spans].sort((a, b) => a.start - b.start)) {
    if (s.start < at) continue;
    node.append(text.slice(at, s.start), el("mark", {}, text.slice(s.start, s.end), el("small", {}, s.label)));
    at = s.end;
  }
  node.append(text.slice(at));
  return node;
}

wire("tag", async () => {
  const out = await call("/tag", { texts: lines("tag-input") });
  return out.results.map((r) => {
    if (r.entities.length) {
      const spans = r.entities.map((e) => ({ ...e, label: `${e.type} ${pct(e.score)}` }));
      return el("div", { class: "result" }, marked(r.text, spans));
    }
    // No entity spans (part-of-speech tags, or none found): each word with its tag.
    const words = r.words.map((w) => el("span", { class: "word" }, w.word, el("small", {}, w.tag)));
    return el("div", { class: "result" }, el("div", {}, ...words));
  });
});

wire("answer", async () => {
  const context = $("answer-context").value;
  const out = await call("/answer", { question: $("answer-question").value, context });
  if (!out.answer) return [el("div", { class: "result" }, "No answer in the context ", el("span", { class: "score" }, pct(out.score)))];
  return [el("div", { class: "result" }, el("div", {}, el("span", { class: "label" }, out.answer), ` ${pct(out.score)}`),
    marked(context, [{ start: out.start, end: out.end, label: "answer" }]))];
});

wire("rerank", async () => {
  const texts = lines("rerank-documents");
  const out = await call("/rerank", { query: $("rerank-query").value, texts });
  // Most relevant first; index is the passage's line in the form.
  return out.results.map((r, rank) => el("div", { class: "result" },
    el("div", {}, el("span", { class: "label" }, `#${rank + 1}`), ` ${pct(r.score)} · line ${r.index + 1}`),
    el("div", { class: "text" }, texts[r.index])));
});

wire("zeroshot", async () => {
  const texts = lines("zeroshot-input");
  const labels = $("zeroshot-labels").value.split(",").map((s) => s.trim()).filter(Boolean);
  const out = await call("/zeroshot", { texts, labels });
  return out.results.map((r, i) => el("div", { class: "result" }, el("div", { class: "text" }, texts[i]),
    el("div", {}, el("span", { class: "label" }, r.label), ` ${pct(r.score)} (${out.method})`), bars(r.scores)));
});

wire("embed", async () => {
  const texts = lines("embed-input");
  const out = await call("/embed", { texts, normalize: true });
  const v = out.embeddings;
  // Unit vectors: the dot product is the cosine similarity.
  const cos = (a, b) => a.reduce((s, x, k) => s + x * b[k], 0);
  const table = el("table", { class: "sim" }, el("tr", {}, el("th", {}, "cosine"), ...texts.map((_, j) => el("th", {}, `#${j + 1}`))));
  v.forEach((a, i) => table.append(el("tr", {}, el("th", {}, `#${i + 1}`), ...v.map((b) => el("td", {}, cos(a, b).toFixed(3))))));
  const rows = texts.map((t, i) => el("div", {}, `#${i + 1} ${t} `,
    el("code", {}, `[${v[i].slice(0, 6).map((x) => x.toFixed(3)).join(", ")}, …]`)));
  return [el("div", { class: "result" }, el("div", {}, `${v.length} vectors of ${out.dim} numbers (normalised)`), ...rows), table];
});

// Chat: the whole history goes each time; the reply streams in as server-sent events.
function bubble(role, text) {
  const node = el("div", { class: `msg ${role}` }, text);
  $("transcript").append(node);
  $("transcript").scrollTop = $("transcript").scrollHeight;
  return node;
}

async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

async function chat(prompt) {
  history.push({ role: "user", content: prompt });
  bubble("user", prompt);
  const reply = bubble("assistant", "");
  reply.classList.add("streaming");
  reply.dataset.chunks = "0";
  const system = $("chat-system").value.trim();
  const body = {
    model: info.model,
    messages: [...(system ? [{ role: "system", content: system }] : []), ...history],
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: Number($("chat-max-tokens").value) || undefined,
  };
  const temperature = $("chat-temperature").value;
  if (temperature !== "") body.temperature = Number(temperature);
  const started = performance.now();
  let text = "", finish = null, usage = null;
  try {
    const response = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (response.status === 404 && info.endpoints.includes("/generate")) {
      // A text-to-text model has no chat template: its output for the message, from /generate.
      const out = await call("/generate", { prompt, max_new_tokens: body.max_tokens });
      text = out.completions[0];
      reply.textContent = text;
      reply.dataset.chunks = "1";
      history.pop(); // each message stands alone for such a model
      reply.dataset.finish = out.finish_reasons[0];
      status("");
      return;
    }
    if (!response.ok) throw await failure(response);
    for await (const chunk of events(response)) {
      if (chunk.error) throw new Error(chunk.error.message ?? String(chunk.error));
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      if (choice.delta?.content) {
        text += choice.delta.content;
        reply.textContent = text;
        reply.dataset.chunks = String(Number(reply.dataset.chunks) + 1);
        $("transcript").scrollTop = $("transcript").scrollHeight;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    history.push({ role: "assistant", content: text });
    const seconds = (performance.now() - started) / 1000;
    const tokens = usage ? `${usage.completion_tokens} tokens, ${(usage.completion_tokens / seconds).toFixed(1)} tokens/s, ` : "";
    reply.append(el("span", { class: "meta" }, `${tokens}${seconds.toFixed(2)} s, finish: ${finish}`));
    reply.dataset.finish = finish ?? "";
    status("");
  } catch (e) {
    history.pop();
    reply.dataset.finish = "error";
    status(e.message, true);
  } finally {
    reply.classList.remove("streaming");
  }
}

$("chat-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const prompt = $("chat-input").value.trim();
  if (!prompt) return;
  $("chat-input").value = "";
  $("chat-send").disabled = true;
  try { await chat(prompt); } finally { $("chat-send").disabled = false; $("chat-input").focus(); }
});
$("chat-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("chat-form").requestSubmit();
  }
});
$("chat-clear").addEventListener("click", () => { history = []; $("transcript").replaceChildren(); });

function select(id) {
  for (const [, tab] of TABS) {
    $(`panel-${tab}`).hidden = tab !== id;
    $(`tab-${tab}`)?.setAttribute("aria-selected", String(tab === id));
  }
}

async function load() {
  $("key").value = localStorage.getItem(KEY) ?? "";
  try {
    info = await call("/info");
  } catch (e) {
    $("model").textContent = "";
    status(e.message.startsWith("401") ? "This server needs its API key: type it above." : e.message, true);
    return;
  }
  $("model").textContent = `${info.model} · ${info.kind} · ${info.backend}`;
  const shown = TABS.filter(([route]) => info.endpoints.includes(route));
  $("tabs").replaceChildren(...shown.map(([, tab, title]) => {
    const button = el("button", { id: `tab-${tab}`, type: "button", role: "tab" }, title);
    button.addEventListener("click", () => select(tab));
    return button;
  }));
  status(shown.length ? "" : "This model serves no route the playground shows.");
  if (shown.length) select(shown[0][1]);
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem(KEY, $("key").value.trim());
  load();
});
load();

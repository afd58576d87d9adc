// The chat page: multi-turn history, streaming with Stop, smooth display, live metrics.
// Model output only ever goes into text nodes, never parsed as HTML, so it cannot inject markup.
import { HttpError, StreamLost, postChat, resumableEvents, stopChat } from "./stream.js";

const $ = (id) => document.getElementById(id);
const ui = {
  log: $("log"),
  empty: $("empty"),
  form: $("composer"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
  newChat: $("new-chat"),
  chain: $("chain"),
  deployments: $("deployments"),
  deploymentList: $("deployment-list"),
  deploymentsSummary: $("deployments-summary"),
  key: $("key"),
  system: $("system"),
  maxTokens: $("max-tokens"),
  wire: $("wire"),
  stream: $("stream"),
  smooth: $("smooth"),
  metrics: { ttft: $("m-ttft"), rate: $("m-rate"), tokens: $("m-tokens"), usage: $("m-usage") },
};

const CHAT_URL = new URL("chat", document.baseURI); // the page is .../ui, the API .../chat
const CATALOG_URL = new URL("chains", document.baseURI);
const reducedMotion = matchMedia("(prefers-reduced-motion: reduce)");

/** Messages sent with every request; the answer is added once a turn ends. */
let history = [];
let current = null; // { controller, turn, id, stopping } while an answer is in flight

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function nearBottom() {
  return innerHeight + scrollY >= document.documentElement.scrollHeight - 80;
}

function keepScrolled(wasNearBottom) {
  if (wasNearBottom) scrollTo({ top: document.documentElement.scrollHeight });
}

/**
 * Reveals streamed text word by word. Network chunks arrive in bursts and browsers paint
 * whatever accumulated in a frame, so whole sentences can pop in at once. We queue the text
 * and, on each animation frame, show only whole words: at least one, more when the queue
 * grows (1/6 of the backlog), so the display never falls more than a few frames behind.
 * A word is held back until whitespace follows it, because the next delta may continue it.
 */
class Typewriter {
  constructor(textNode, smooth) {
    this.node = textNode;
    this.pending = "";
    this.smooth = smooth;
    this.finished = false;
    this.frame = 0;
    this.drained = null; // resolves when the queue is empty after finish()
  }

  get text() {
    return this.node.data + this.pending;
  }

  push(text) {
    this.pending += text;
    if (!this.smooth || document.hidden) this.flush();
    else if (!this.frame) this.frame = requestAnimationFrame(() => this.tick());
  }

  tick() {
    this.frame = 0;
    const words = this.pending.match(/\s*\S+/g) ?? [];
    let complete = words.length;
    if (!this.finished && !/\s$/.test(this.pending)) complete -= 1;
    if (complete <= 0) {
      if (this.finished) this.flush(); // only whitespace left
      return;
    }
    const count = Math.max(1, Math.ceil(complete / 6));
    const shown = words.slice(0, count).join("").length;
    this.write(this.pending.slice(0, shown));
    this.pending = this.pending.slice(shown);
    if (this.pending && (complete > count || this.finished)) {
      this.frame = requestAnimationFrame(() => this.tick());
    } else if (!this.pending) {
      this.settle();
    }
  }

  write(text) {
    const stick = nearBottom();
    this.node.data += text;
    keepScrolled(stick);
  }

  /** Show everything now (Stop, errors, non-smooth mode). */
  flush() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    if (this.pending) this.write(this.pending);
    this.pending = "";
    this.settle();
  }

  settle() {
    if (this.finished && !this.pending && this.drained) this.drained.resolve();
  }

  /** No more text will come: reveal the rest (still smoothly); resolves when all is shown. */
  finish() {
    this.finished = true;
    let resolve;
    const done = new Promise((r) => (resolve = r));
    this.drained = { resolve };
    if (!this.pending || !this.smooth || document.hidden) this.flush();
    else if (!this.frame) this.frame = requestAnimationFrame(() => this.tick());
    return done;
  }
}

/** A tool call's arguments as `name='value', n=3` (or the raw text while it is still streaming). */
function formatArguments(raw) {
  let args;
  try {
    args = JSON.parse(raw || "{}");
  } catch {
    return raw; // incomplete JSON: show what has arrived so far
  }
  if (!args || typeof args !== "object" || Array.isArray(args)) return raw;
  const repr = (v) => (typeof v === "string" ? `'${v.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'` : JSON.stringify(v));
  return Object.entries(args).map(([k, v]) => `${k}=${repr(v)}`).join(", ");
}

const clip = (text, max = 300) => (text.length > max ? `${text.slice(0, max)}…` : text);

/** One deployment's part of an answer: progress, tool calls, text, citations, usage and error. */
class Output {
  constructor(deployment, smooth) {
    this.box = el("section", "output");
    this.box.dataset.deployment = deployment;
    this.progress = el("p", "progress");
    this.progress.setAttribute("role", "status");
    this.tools = el("ul", "tools");
    this.tools.setAttribute("aria-label", "Tool calls");
    const text = el("div", "text");
    const node = document.createTextNode("");
    text.append(node);
    this.citations = el("ol", "citations");
    this.citations.setAttribute("aria-label", "Sources");
    this.meta = el("p", "meta");
    this.box.append(el("div", "deployment", deployment), this.progress, this.tools, text, this.citations, this.meta);
    this.writer = new Typewriter(node, smooth);
    this.error = null; // created on the first error, so a turn has one alert per failure
    this.calls = new Map(); // tool call id -> { item, name, args, result, error }
    this.streamingCalls = new Map(); // index -> id of the call whose arguments are streaming
  }

  call(id, name) {
    let call = this.calls.get(id);
    if (!call) {
      call = { item: el("li", "tool"), name: name || "tool", args: "", result: null, error: null };
      call.item.dataset.callId = id;
      this.tools.append(call.item);
      this.calls.set(id, call);
    }
    if (name) call.name = name;
    return call;
  }

  renderCall(call) {
    let line = `${call.name}(${formatArguments(call.args)})`;
    if (call.error !== null) line += ` ✗ ${clip(call.error)}`;
    else if (call.result !== null) line += ` → ${clip(call.result)}`;
    call.item.dataset.state = call.error !== null ? "error" : call.result !== null ? "done" : "running";
    call.item.textContent = line;
  }

  showCitations(citations) {
    this.citations.replaceChildren();
    for (const c of Array.isArray(citations) ? citations : []) {
      const item = el("li", "citation", c.source ? `${c.title} — ${c.source}` : String(c.title ?? c.id));
      if (Number.isInteger(c.number)) item.value = c.number;
      this.citations.append(item);
    }
  }

  showError(text) {
    if (!this.error) {
      this.error = el("p", "error");
      this.error.setAttribute("role", "alert");
      this.meta.before(this.error);
    }
    this.error.textContent = text;
  }

  end(event) {
    this.box.dataset.ended = event.finish_reason || "";
    this.progress.textContent = "";
    const parts = [];
    if (event.usage) parts.push(formatUsage(event.usage));
    if (event.finish_reason) parts.push(event.finish_reason);
    this.meta.textContent = parts.join(" · ");
  }
}

/** One assistant answer: its outputs (one per deployment, side by side), status line and metrics. */
class Turn {
  constructor(smooth) {
    this.smooth = smooth;
    this.article = el("article", "msg assistant");
    this.article.dataset.state = "waiting";
    this.article.setAttribute("aria-busy", "true"); // screen readers read it once, when done
    this.article.append(el("div", "who", "Assistant"));
    this.outputsNode = el("div", "outputs");
    this.status = el("p", "status", "Waiting for the model…");
    this.error = null;
    this.article.append(this.outputsNode, this.status);
    this.outputs = new Map(); // deployment -> Output
    this.multi = false; // several deployments: per-deployment `end`s, then one `done`
    this.ends = new Map(); // deployment -> its end event
    this.sentAt = performance.now();
    this.firstAt = 0;
    this.lastAt = 0;
    this.deltas = 0;
    this.usage = null;
  }

  /** The output for a deployment, created on its first event. */
  output(deployment = "") {
    let output = this.outputs.get(deployment);
    if (!output) {
      output = new Output(deployment, this.smooth);
      this.outputsNode.append(output.box);
      this.outputs.set(deployment, output);
      this.article.classList.toggle("multi", this.multi || this.outputs.size > 1);
    }
    return output;
  }

  /** A multi-deployment `start`: one column per deployment, in the order they were asked for. */
  expect(deployments) {
    this.multi = true;
    this.article.classList.add("multi");
    for (const name of deployments) this.output(name);
  }

  /** The answer that goes into history: the first deployment's text. */
  get text() {
    const first = this.outputs.values().next().value;
    return first ? first.writer.text : "";
  }

  /** The deployments that failed before the one that answered (`start.fallback_from`). */
  showFallback(deployment, failures) {
    const note = el("p", "fallback", fallbackNote(deployment, failures));
    note.setAttribute("role", "note");
    this.outputsNode.before(note);
  }

  /** The connection dropped and is being resumed: a discreet status, not an error. */
  reconnecting(on) {
    if (on) {
      this.article.dataset.connection = "reconnecting";
      this.status.textContent = "Reconnecting…";
    } else if (this.article.dataset.connection) {
      delete this.article.dataset.connection;
      this.status.textContent = current?.stopping ? "Stopping…" : "";
    }
  }

  setState(state, status) {
    this.article.dataset.state = state;
    this.status.textContent = status;
    if (state !== "streaming" && state !== "waiting") this.article.removeAttribute("aria-busy");
  }

  /** An error about the whole answer (HTTP error, broken connection), not one deployment's. */
  showError(text) {
    if (!this.error) {
      this.error = el("p", "error");
      this.error.setAttribute("role", "alert");
      this.status.before(this.error);
    }
    this.error.textContent = text;
  }

  async settle(state, status) {
    await Promise.all([...this.outputs.values()].map((o) => o.writer.finish()));
    this.setState(state, status);
  }

  stopNow(state, status) {
    for (const output of this.outputs.values()) output.writer.flush();
    this.setState(state, status);
  }
}

// --- Metrics: time to first token, tokens per second (live while streaming), usage. ---

const fmtMs = (ms) => (ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`);

function showMetrics(turn, final = false) {
  const m = ui.metrics;
  m.ttft.textContent = turn.firstAt ? fmtMs(turn.firstAt - turn.sentAt) : "–";
  const tokens = turn.usage ? turn.usage.completion_tokens : turn.deltas;
  // Generation speed after the first token; live: up to now, final: up to the last token.
  const until = final ? turn.lastAt : performance.now();
  const seconds = turn.firstAt ? (until - turn.firstAt) / 1000 : 0;
  m.rate.textContent = seconds > 0.05 && tokens > 1 ? `${((tokens - 1) / seconds).toFixed(1)} tok/s` : "–";
  m.tokens.textContent = turn.usage ? String(tokens) : `${turn.deltas}${final ? "" : "…"}`;
  m.usage.textContent = turn.usage ? formatUsage(turn.usage) : final ? "not reported" : "–";
}

/** `18 in + 11 out = 29`, marked when the app counted it itself (after a stop). */
function formatUsage(u) {
  const bill = `${u.prompt_tokens} in + ${u.completion_tokens} out = ${u.total_tokens}`;
  return u.estimated ? `${bill} (estimated)` : bill;
}

const FAILED_AS = {
  rate_limited: "was rate limited",
  upstream_timeout: "timed out",
  upstream_unavailable: "was unavailable",
  upstream_overloaded: "was overloaded",
};

/** "answered by gpt-4o after gpt-4o-mini was rate limited" */
function fallbackNote(deployment, failures) {
  const what = failures.map((f) => `${f.deployment} ${FAILED_AS[f.code] || `failed (${f.code})`}`);
  const list = what.length > 1 ? `${what.slice(0, -1).join(", ")} and ${what.at(-1)}` : what[0];
  return `answered by ${deployment} after ${list}`;
}

function resetMetrics() {
  for (const node of Object.values(ui.metrics)) node.textContent = "–";
}

// --- Events. Add a handler here for a new event type; unknown types are ignored. ---

const handlers = {
  start(turn, event) {
    if (Array.isArray(event.deployments) && event.deployments.length > 1) turn.expect(event.deployments);
    if (Array.isArray(event.fallback_from) && event.fallback_from.length) {
      turn.showFallback(event.deployment, event.fallback_from);
    }
    turn.setState("streaming", current?.stopping ? "Stopping…" : "");
  },
  delta(turn, event) {
    if (typeof event.delta_content !== "string" || !event.delta_content) return;
    turn.lastAt = performance.now();
    if (!turn.firstAt) turn.firstAt = turn.lastAt;
    turn.deltas += 1;
    turn.output(event.deployment).writer.push(event.delta_content);
  },
  progress(turn, event) {
    turn.output(event.deployment).progress.textContent = String(event.message ?? event.stage ?? "");
  },
  citations(turn, event) {
    turn.output(event.deployment).showCitations(event.citations);
  },
  tool_call_delta(turn, event) {
    const output = turn.output(event.deployment);
    const id = event.id || output.streamingCalls.get(event.index);
    if (!id) return;
    if (event.id) output.streamingCalls.set(event.index, event.id);
    const call = output.call(id, event.name);
    call.args += typeof event.arguments_delta === "string" ? event.arguments_delta : "";
    output.renderCall(call);
  },
  tool_call(turn, event) {
    const output = turn.output(event.deployment);
    output.streamingCalls.delete(event.index);
    const call = output.call(event.id, event.name);
    call.args = typeof event.arguments === "string" ? event.arguments : "";
    output.renderCall(call);
  },
  tool_result(turn, event) {
    const output = turn.output(event.deployment);
    const call = output.call(event.id, event.name);
    call.result = String(event.content ?? "");
    output.renderCall(call);
  },
  tool_error(turn, event) {
    const output = turn.output(event.deployment);
    const call = output.call(event.id, event.name);
    call.error = String(event.message ?? "failed");
    output.renderCall(call);
  },
  error(turn, event) {
    const retry = event.retryable ? " You can try again." : "";
    turn.output(event.deployment).showError(`Error (${event.code}): ${event.message}.${retry}`);
  },
  end(turn, event) {
    turn.output(event.deployment).end(event);
    turn.ends.set(event.deployment, event);
    if (turn.multi) {
      turn.usage = sumUsage([...turn.ends.values()].map((e) => e.usage));
    } else {
      turn.usage = event.usage || null;
      turn.finishReason = event.finish_reason;
    }
  },
  done(turn, event) {
    const failed = Array.isArray(event.failed) ? event.failed : [];
    const asked = Array.isArray(event.deployments) ? event.deployments.length : turn.outputs.size;
    turn.failed = failed;
    const stopped = [...turn.ends.values()].some((e) => e.finish_reason === "cancelled");
    turn.finishReason = failed.length && failed.length >= asked ? "error" : stopped ? "cancelled" : "stop";
  },
  heartbeat() {},
};

/** Token usage summed over deployments (null if none reported any). */
function sumUsage(usages) {
  const reported = usages.filter(Boolean);
  if (!reported.length) return null;
  const sum = (key) => reported.reduce((n, u) => n + (u[key] || 0), 0);
  return { prompt_tokens: sum("prompt_tokens"), completion_tokens: sum("completion_tokens"), total_tokens: sum("total_tokens") };
}

function dispatch(turn, event) {
  if (event && Object.hasOwn(handlers, event.type)) handlers[event.type](turn, event);
}

const FINISH_NOTES = {
  cancelled: "Stopped.",
  length: "Stopped at the token limit.",
  content_filter: "Stopped by the content filter.",
  error: "The answer is incomplete.",
};

// --- Sending. ---

function setBusy(busy) {
  ui.send.disabled = busy;
  ui.stop.disabled = !busy;
  ui.form.setAttribute("aria-busy", String(busy));
}

function addUserMessage(text) {
  ui.empty.hidden = true;
  const article = el("article", "msg user");
  article.append(el("div", "who", "You"), el("div", "text", text));
  ui.log.append(article);
}

function requestBody(messages) {
  const body = { messages, stream: ui.stream.checked };
  // A streamed answer outlives a dropped connection: the page resumes it, and Stop ends it cleanly.
  if (body.stream) body.resumable = true;
  if (ui.chain.value) body.chain = ui.chain.value;
  const deployments = chosenDeployments();
  if (deployments.length) body.deployments = deployments;
  const maxTokens = ui.maxTokens.value.trim();
  if (maxTokens) body.max_tokens = Number(maxTokens);
  return body;
}

// --- Chain and deployment choices, from GET /api/chains. Without it the app's defaults are used. ---

let defaultDeployment = null;

function deploymentBoxes() {
  return [...ui.deploymentList.querySelectorAll("input[type=checkbox]")];
}

/** The deployments to name in the request: none when only the default one is ticked. */
function chosenDeployments() {
  const chosen = deploymentBoxes().filter((box) => box.checked).map((box) => box.value);
  return chosen.length === 1 && chosen[0] === defaultDeployment ? [] : chosen;
}

function updateDeployments(max) {
  const boxes = deploymentBoxes();
  const chosen = boxes.filter((box) => box.checked);
  // At most `max` at once; never none (the last ticked box cannot be unticked).
  for (const box of boxes) box.disabled = box.checked ? chosen.length === 1 : chosen.length >= max;
  ui.deploymentsSummary.textContent = chosen.map((box) => box.value).join(" + ") || "default";
}

function showCatalog(catalog) {
  const chains = Array.isArray(catalog.chains) ? catalog.chains : [];
  if (chains.length) {
    ui.chain.replaceChildren(
      ...chains.map((chain) => {
        const option = new Option(chain.name, chain.name, false, chain.name === catalog.default_chain);
        option.title = chain.description || "";
        return option;
      }),
    );
  }
  const deployments = Array.isArray(catalog.deployments) ? catalog.deployments : [];
  defaultDeployment = catalog.default_deployment || deployments[0] || null;
  if (deployments.length < 2) return; // nothing to choose
  const max = Number(catalog.max_request_deployments) || deployments.length;
  for (const name of deployments) {
    const box = el("input");
    box.type = "checkbox";
    box.value = name;
    box.checked = name === defaultDeployment;
    box.addEventListener("change", () => updateDeployments(max));
    const label = el("label", "check");
    label.append(box, document.createTextNode(name));
    ui.deploymentList.append(label);
  }
  updateDeployments(max);
  ui.deployments.hidden = false;
}

async function loadCatalog() {
  try {
    const response = await fetch(CATALOG_URL, { headers: { Accept: "application/json" } });
    if (response.ok) showCatalog(await response.json());
  } catch {
    // An older app without the route, or offline: keep "default" and send no chain.
  }
}

async function ask(question) {
  const messages = [...history, { role: "user", content: question }];
  const system = ui.system.value.trim();
  const body = requestBody(system ? [{ role: "system", content: system }, ...messages] : messages);
  // A non-streamed answer (the accessible choice) appears at once, never animated.
  const smooth = body.stream !== false && ui.smooth.checked && !reducedMotion.matches;
  const turn = new Turn(smooth);
  const controller = new AbortController();
  current = { controller, turn, id: null, stopping: false };
  const key = ui.key.value.trim();
  const ndjson = ui.wire.value === "ndjson";
  addUserMessage(question);
  ui.log.append(turn.article);
  keepScrolled(true);
  setBusy(true);
  resetMetrics();
  let timer = 0;
  try {
    const response = await postChat({ url: CHAT_URL, body, key, signal: controller.signal, ndjson });
    current.id = response.headers.get("x-request-id");
    if (body.stream === false) {
      const answer = await response.json();
      turn.firstAt = turn.lastAt = performance.now();
      turn.usage = answer.usage || null;
      turn.finishReason = answer.finish_reason;
      turn.setState("streaming", "");
      // Chain events (tool calls, progress, citations) come listed in `events`.
      for (const event of Array.isArray(answer.events) ? answer.events : []) {
        if (event.type !== "delta") dispatch(turn, { ...event, deployment: event.deployment ?? answer.deployment });
      }
      if (Array.isArray(answer.fallback_from) && answer.fallback_from.length) {
        turn.showFallback(answer.deployment, answer.fallback_from);
      }
      const output = turn.output(answer.deployment);
      output.writer.push(answer.content || "");
      output.end(answer);
    } else {
      timer = setInterval(() => showMetrics(turn), 100);
      const events = resumableEvents({
        url: CHAT_URL,
        response,
        key,
        signal: controller.signal,
        ndjson,
        onReconnect: () => turn.reconnecting(true),
        onResumed: () => turn.reconnecting(false),
      });
      for await (const event of events) {
        if (event.type === "start" && event.id) current.id = event.id;
        dispatch(turn, event);
      }
    }
    if (turn.finishReason === undefined) {
      turn.showError("The connection closed before the answer finished.");
      await turn.settle("error", "");
    } else if (turn.finishReason === "cancelled") {
      turn.stopNow("stopped", FINISH_NOTES.cancelled); // Stop: show the partial answer at once
    } else {
      const failed = turn.multi && turn.failed?.length ? `${turn.failed.length} of ${turn.outputs.size} deployments failed.` : "";
      const note = turn.multi ? failed : FINISH_NOTES[turn.finishReason] || "";
      await turn.settle(turn.finishReason === "error" ? "error" : "done", note);
    }
  } catch (error) {
    if (error.name === "AbortError") {
      turn.stopNow("stopped", "Stopped.");
    } else if (error instanceof StreamLost) {
      turn.showError(`The connection was lost and could not be resumed: ${error.message}.`);
      turn.stopNow("error", "");
    } else if (error instanceof HttpError) {
      turn.showError(`HTTP ${error.status} (${error.code}): ${error.message}`);
      turn.stopNow("error", "");
    } else {
      turn.showError(`Could not read the answer: ${error.message}`);
      turn.stopNow("error", "");
    }
  } finally {
    clearInterval(timer);
    showMetrics(turn, true);
    // Keep partial answers (Stop, errors mid-stream): the next question can refer to them.
    const answer = turn.text;
    if (answer && turn.article.isConnected) history = [...messages, { role: "assistant", content: answer }];
    current = null;
    setBusy(false);
  }
}

ui.form.addEventListener("submit", (e) => {
  e.preventDefault();
  const question = ui.prompt.value.trim();
  if (!question || current) return;
  ui.prompt.value = "";
  ask(question);
});

ui.prompt.addEventListener("keydown", (e) => {
  // Enter sends, Shift+Enter is a new line; never while an IME is composing text.
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    ui.form.requestSubmit();
  }
});

/** How long the stream's `end` may take after a stop before the page gives up and closes it. */
const STOP_END_WAIT_MS = 10000;

/**
 * Stop: ask the app to end the answer (POST .../stop). The stream then ends with `end`
 * (`finish_reason: "cancelled"`, the usage so far, estimated), so the partial answer is kept with
 * its cost. Before the app named the stream, on a second press, or if the stop fails, the fetch is
 * aborted instead: closing the connection also ends the model call (at once, or after the app's
 * grace period for a resumable stream nobody resumes).
 */
async function stop({ abort = false } = {}) {
  if (!current) return;
  const { controller, turn, id } = current;
  if (abort || current.stopping || !id) {
    if (id && !current.stopping) stopChat({ url: CHAT_URL, id, key: ui.key.value.trim() }).catch(() => {});
    controller.abort();
    return;
  }
  current.stopping = true;
  if (!turn.article.dataset.connection) turn.status.textContent = "Stopping…";
  const stillRunning = () => current && current.turn === turn;
  const accepted = await stopChat({ url: CHAT_URL, id, key: ui.key.value.trim() }).catch(() => false);
  if (!accepted) {
    if (stillRunning()) controller.abort();
    return;
  }
  setTimeout(() => stillRunning() && controller.abort(), STOP_END_WAIT_MS);
}

ui.stop.addEventListener("click", () => stop());
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && current) stop();
});

ui.newChat.addEventListener("click", () => {
  stop({ abort: true });
  history = [];
  for (const node of ui.log.querySelectorAll(".msg")) node.remove();
  ui.empty.hidden = false;
  resetMetrics();
  loadCatalog();
ui.prompt.focus();
});

// The key stays in this tab only (sessionStorage), never in the URL.
ui.key.value = sessionStorage.getItem("chat.functionKey") || "";
ui.key.addEventListener("change", () => sessionStorage.setItem("chat.functionKey", ui.key.value.trim()));

loadCatalog();
ui.prompt.focus();

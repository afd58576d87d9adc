// The chat page: multi-turn history, streaming with Stop, smooth display, live metrics.
// Model output only ever goes into text nodes, never parsed as HTML, so it cannot inject markup.
import { HttpError, postChat, readEvents } from "./stream.js";

const $ = (id) => document.getElementById(id);
const ui = {
  log: $("log"),
  empty: $("empty"),
  form: $("composer"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
  newChat: $("new-chat"),
  key: $("key"),
  system: $("system"),
  maxTokens: $("max-tokens"),
  wire: $("wire"),
  stream: $("stream"),
  smooth: $("smooth"),
  metrics: { ttft: $("m-ttft"), rate: $("m-rate"), tokens: $("m-tokens"), usage: $("m-usage") },
};

const CHAT_URL = new URL("chat", document.baseURI); // the page is .../ui, the API .../chat
const reducedMotion = matchMedia("(prefers-reduced-motion: reduce)");

/** Messages sent with every request; the answer is added once a turn ends. */
let history = [];
let current = null; // { controller, turn } while an answer is in flight

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

/** One assistant answer: its outputs (one per deployment), status line, errors and metrics. */
class Turn {
  constructor(smooth) {
    this.smooth = smooth;
    this.article = el("article", "msg assistant");
    this.article.dataset.state = "waiting";
    this.article.setAttribute("aria-busy", "true"); // screen readers read it once, when done
    this.article.append(el("div", "who", "Assistant"));
    this.outputsNode = el("div", "outputs");
    this.status = el("p", "status", "Waiting for the model…");
    this.error = el("p", "error");
    this.error.setAttribute("role", "alert");
    this.article.append(this.outputsNode, this.error, this.status);
    this.outputs = new Map(); // deployment -> Typewriter
    this.sentAt = performance.now();
    this.firstAt = 0;
    this.lastAt = 0;
    this.deltas = 0;
    this.usage = null;
  }

  /** The output for a deployment; a second deployment turns the answer into labelled sections. */
  output(deployment = "") {
    let writer = this.outputs.get(deployment);
    if (!writer) {
      const box = el("section", "output");
      box.dataset.deployment = deployment;
      box.append(el("div", "deployment", deployment));
      const text = el("div", "text");
      const node = document.createTextNode("");
      text.append(node);
      box.append(text);
      this.outputsNode.append(box);
      writer = new Typewriter(node, this.smooth);
      this.outputs.set(deployment, writer);
      this.article.classList.toggle("multi", this.outputs.size > 1);
    }
    return writer;
  }

  /** The answer that goes into history: the first deployment's text. */
  get text() {
    const first = this.outputs.values().next().value;
    return first ? first.text : "";
  }

  setState(state, status) {
    this.article.dataset.state = state;
    this.status.textContent = status;
    if (state !== "streaming" && state !== "waiting") this.article.removeAttribute("aria-busy");
  }

  showError(text) {
    this.error.textContent = text;
  }

  async settle(state, status) {
    await Promise.all([...this.outputs.values()].map((w) => w.finish()));
    this.setState(state, status);
  }

  stopNow(state, status) {
    for (const writer of this.outputs.values()) writer.flush();
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
  m.usage.textContent = turn.usage
    ? `${turn.usage.prompt_tokens} in + ${turn.usage.completion_tokens} out = ${turn.usage.total_tokens}`
    : final ? "not reported" : "–";
}

function resetMetrics() {
  for (const node of Object.values(ui.metrics)) node.textContent = "–";
}

// --- Events. Add a handler here for a new event type; unknown types are ignored. ---

const handlers = {
  start(turn) {
    turn.setState("streaming", "");
  },
  delta(turn, event) {
    if (typeof event.delta_content !== "string" || !event.delta_content) return;
    turn.lastAt = performance.now();
    if (!turn.firstAt) turn.firstAt = turn.lastAt;
    turn.deltas += 1;
    turn.output(event.deployment).push(event.delta_content);
  },
  error(turn, event) {
    const retry = event.retryable ? " You can try again." : "";
    turn.showError(`Error (${event.code}): ${event.message}.${retry}`);
  },
  end(turn, event) {
    turn.usage = event.usage || null;
    turn.finishReason = event.finish_reason;
  },
  heartbeat() {},
};

function dispatch(turn, event) {
  if (event && Object.hasOwn(handlers, event.type)) handlers[event.type](turn, event);
}

const FINISH_NOTES = {
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
  const maxTokens = ui.maxTokens.value.trim();
  if (maxTokens) body.max_tokens = Number(maxTokens);
  return body;
}

async function ask(question) {
  const messages = [...history, { role: "user", content: question }];
  const system = ui.system.value.trim();
  const body = requestBody(system ? [{ role: "system", content: system }, ...messages] : messages);
  // A non-streamed answer (the accessible choice) appears at once, never animated.
  const smooth = body.stream !== false && ui.smooth.checked && !reducedMotion.matches;
  const turn = new Turn(smooth);
  const controller = new AbortController();
  current = { controller, turn };
  addUserMessage(question);
  ui.log.append(turn.article);
  keepScrolled(true);
  setBusy(true);
  resetMetrics();
  let timer = 0;
  try {
    const response = await postChat({
      url: CHAT_URL,
      body,
      key: ui.key.value.trim(),
      signal: controller.signal,
      ndjson: ui.wire.value === "ndjson",
    });
    if (body.stream === false) {
      const answer = await response.json();
      turn.firstAt = turn.lastAt = performance.now();
      turn.usage = answer.usage || null;
      turn.finishReason = answer.finish_reason;
      turn.setState("streaming", "");
      turn.output(answer.deployment).push(answer.content || "");
    } else {
      timer = setInterval(() => showMetrics(turn), 100);
      for await (const event of readEvents(response)) dispatch(turn, event);
    }
    if (turn.finishReason === undefined) {
      turn.showError("The connection closed before the answer finished.");
      await turn.settle("error", "");
    } else {
      await turn.settle(turn.finishReason === "error" ? "error" : "done", FINISH_NOTES[turn.finishReason] || "");
    }
  } catch (error) {
    if (error.name === "AbortError") {
      turn.stopNow("stopped", "Stopped.");
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
    if (answer) history = [...messages, { role: "assistant", content: answer }];
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

function stop() {
  // Aborting the fetch closes the connection; the app sees it and cancels the model call.
  if (current) current.controller.abort();
}

ui.stop.addEventListener("click", stop);
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && current) stop();
});

ui.newChat.addEventListener("click", () => {
  stop();
  history = [];
  for (const node of ui.log.querySelectorAll(".msg")) node.remove();
  ui.empty.hidden = false;
  resetMetrics();
  ui.prompt.focus();
});

// The key stays in this tab only (sessionStorage), never in the URL.
ui.key.value = sessionStorage.getItem("chat.functionKey") || "";
ui.key.addEventListener("change", () => sessionStorage.setItem("chat.functionKey", ui.key.value.trim()));

ui.prompt.focus();

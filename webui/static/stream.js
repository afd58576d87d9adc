// Reading the chat stream in a browser: POST with fetch, then parse SSE or NDJSON from the body.
// EventSource cannot POST or send headers, so we read `response.body` ourselves. This file has no
// UI code; copy it into your own frontend as a starting point.

/** An HTTP error answer (4xx/5xx before the stream started), with the app's JSON error if any. */
export class HttpError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.name = "HttpError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }

  static async from(response) {
    let code = "http_" + response.status;
    let message = response.statusText || "request failed";
    try {
      const body = await response.json();
      if (body && body.error) {
        code = body.error.code || code;
        message = body.error.message || message;
      }
    } catch {
      // Not JSON: Azure's own 401/404 answers have an empty body.
      if (response.status === 401) message = "the app needs a function key (set it in Settings)";
    }
    return new HttpError(response.status, code, message, response.headers.get("retry-after"));
  }
}

/**
 * Server-Sent Events parser, fed with decoded text in whatever pieces the network delivers.
 * A chunk may end anywhere: inside a JSON payload, between "data:" and its value, or between
 * the "\r" and "\n" of one line ending. So we keep the unfinished tail in `buffer` and only
 * act on complete lines, and an event is only complete at its blank line.
 */
export class SSEParser {
  constructor() {
    this.buffer = "";
    this.data = [];
    this.lastEventId = null; // the `id:` in force (it carries over to later events, per the spec)
  }

  /** Returns the data of every event completed by `text` (possibly none). */
  push(text) {
    return this.pushEvents(text).map((e) => e.data);
  }

  /** Like push, with each event's id: `{data, id}` (id null when the stream sends none). */
  pushEvents(text) {
    this.buffer += text;
    const events = [];
    const lineEnd = /\r\n|\r|\n/g; // the spec allows all three
    let start = 0;
    let match;
    while ((match = lineEnd.exec(this.buffer)) !== null) {
      // A "\r" at the very end may be the first half of a "\r\n" whose "\n" is in the next chunk.
      if (match[0] === "\r" && lineEnd.lastIndex === this.buffer.length) break;
      this.line(this.buffer.slice(start, match.index), events);
      start = lineEnd.lastIndex;
    }
    this.buffer = this.buffer.slice(start);
    return events;
  }

  line(line, events) {
    if (line === "") {
      // Blank line: dispatch. Several data lines of one event are joined with "\n".
      if (this.data.length) events.push({ data: this.data.join("\n"), id: this.lastEventId });
      this.data = [];
      return;
    }
    if (line.startsWith(":")) return; // a comment: the server's heartbeat (": ping")
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
    // `event:` and `retry:` are unused: the event type is inside the JSON.
  }

  /** End of body: an event without its blank line was cut off, so it is dropped (per the spec). */
  finish() {
    return [];
  }
}

/** NDJSON parser: one JSON value per line; a line may also arrive in several pieces. */
export class NDJSONParser {
  constructor() {
    this.buffer = "";
  }

  push(text) {
    this.buffer += text;
    const lines = this.buffer.split("\n");
    this.buffer = lines.pop(); // the unfinished last line, or "" after a trailing "\n"
    return lines.map((l) => l.trim()).filter(Boolean);
  }

  finish() {
    const rest = this.buffer.trim();
    this.buffer = "";
    return rest ? [rest] : [];
  }
}

/**
 * Yield `{id, event}` for each event of a streaming response, in order, as they arrive. `id` is the
 * SSE `id:` as a number (null without one); NDJSON has no ids, so its lines are numbered from
 * `firstId` (what a resumable stream's position is). Ends at `data: [DONE]` (SSE) or at the end of
 * the body. Throws on a malformed payload, on a network error, and rethrows the AbortError when the
 * caller aborts the fetch.
 */
export async function* readFrames(response, firstId = 0) {
  const ndjson = (response.headers.get("content-type") || "").includes("ndjson");
  const parser = ndjson ? new NDJSONParser() : new SSEParser();
  const reader = response.body.getReader();
  // `stream: true` keeps a multi-byte UTF-8 character that is split across chunks intact.
  const decoder = new TextDecoder();
  let line = firstId;
  const frame = ndjson
    ? (payload) => ({ data: payload, id: line++ })
    : (e) => ({ data: e.data, id: e.id === null || e.id === "" ? null : Number(e.id) });
  const push = (text) => (ndjson ? parser.push(text) : parser.pushEvents(text));
  try {
    for (;;) {
      const { value, done } = await reader.read();
      const payloads = done
        ? [...push(decoder.decode()), ...parser.finish()]
        : push(decoder.decode(value, { stream: true }));
      for (const payload of payloads) {
        const { data, id } = frame(payload);
        if (data === "[DONE]") return;
        yield { id, event: JSON.parse(data) };
      }
      if (done) return;
    }
  } finally {
    // Stopping early (break, abort, error) cancels the body, which closes the connection.
    reader.cancel().catch(() => {});
  }
}

/** Yield the event objects of a streaming response (readFrames without the ids). */
export async function* readEvents(response) {
  for await (const { event } of readFrames(response)) yield event;
}

/** The connection dropped and the stream could not be resumed. */
export class StreamLost extends Error {
  constructor(message) {
    super(message);
    this.name = "StreamLost";
  }
}

const sleep = (ms, signal) =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(signal.reason ?? new DOMException("aborted", "AbortError"));
    });
  });

/**
 * The events of a resumable stream (`"resumable": true` in the request) across dropped connections.
 * When the body breaks (a network error) or ends before the stream's last event, this reconnects to
 * `GET {url}/{id}/stream` with `Last-Event-ID` and goes on: events already seen are skipped by id, so
 * no text is lost or shown twice. At most `maxResumes` reconnects in a row may fail (one that brings
 * events resets the count), with backoff; then StreamLost. `onReconnect(n)` is called before a
 * reconnect, `onResumed()` once a reconnect brought an event. HTTP errors of a resume throw HttpError.
 */
export async function* resumableEvents({ url, response, key, signal, ndjson = false, maxResumes = 5, onReconnect, onResumed }) {
  let id = response.headers.get("x-request-id");
  let lastId = -1;
  let failures = 0;
  let multi = false;
  let ended = false;
  let attempt = 0;
  for (;;) {
    let progressed = false;
    try {
      response ??= await resumeChat({ url, id, lastId, key, signal, ndjson });
      for await (const { id: eventId, event } of readFrames(response, lastId + 1)) {
        if (eventId !== null) {
          if (eventId <= lastId) continue; // already seen before the connection dropped
          lastId = eventId;
        }
        if (!progressed && attempt) onResumed?.();
        progressed = true;
        if (event.type === "start") {
          id = event.id || id;
          multi = Array.isArray(event.deployments) && event.deployments.length > 1;
        }
        if (event.type === (multi ? "done" : "end")) ended = true;
        yield event;
      }
      if (ended) return;
    } catch (error) {
      if (ended) return; // only the [DONE] trailer was lost
      // Aborted, a malformed payload, or the app's answer to the resume: not a dropped connection.
      if (signal?.aborted || error.name === "AbortError" || error instanceof SyntaxError || error instanceof HttpError) {
        throw error;
      }
    }
    if (!id) throw new StreamLost("the connection closed before the stream started");
    response = null;
    failures = progressed ? 0 : failures + 1;
    if (failures >= maxResumes) throw new StreamLost(`the stream could not be resumed after ${failures} attempts`);
    attempt += 1;
    onReconnect?.(attempt);
    await sleep(Math.min(4000, 250 * 2 ** failures), signal);
  }
}

/** `GET {url}/{id}/stream` with `Last-Event-ID`: the events after `lastId`, then the live rest. */
export async function resumeChat({ url, id, lastId, key, signal, ndjson = false }) {
  const headers = { Accept: ndjson ? "application/x-ndjson" : "text/event-stream" };
  if (lastId >= 0) headers["Last-Event-ID"] = String(lastId);
  if (key) headers["x-functions-key"] = key;
  const response = await fetch(`${url}/${encodeURIComponent(id)}/stream`, { headers, signal, cache: "no-store" });
  if (!response.ok || response.status === 204) throw await HttpError.from(response);
  return response;
}

/**
 * `POST {url}/{id}/stop`: the app ends the stream, whose reader then gets `end` with
 * `finish_reason: "cancelled"` and the usage so far. True when the app took it (or it had finished).
 */
export async function stopChat({ url, id, key }) {
  const headers = key ? { "x-functions-key": key } : {};
  const response = await fetch(`${url}/${encodeURIComponent(id)}/stop`, { method: "POST", headers, cache: "no-store" });
  return response.ok || response.status === 409;
}

/**
 * POST a chat request. Resolves to the Response once headers arrived and the status is 2xx;
 * throws HttpError otherwise. `key` goes in `x-functions-key`, as Azure Functions expects.
 */
export async function postChat({ url, body, key, signal, ndjson = false }) {
  const headers = { "Content-Type": "application/json" };
  if (body.stream !== false) headers.Accept = ndjson ? "application/x-ndjson" : "text/event-stream";
  if (key) headers["x-functions-key"] = key;
  const response = await fetch(url, {
    method: "POST",
    headers,
    body: JSON.stringify(body),
    signal,
    cache: "no-store",
  });
  if (!response.ok) throw await HttpError.from(response);
  return response;
}

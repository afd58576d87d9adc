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
  }

  /** Returns the data of every event completed by `text` (possibly none). */
  push(text) {
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
      if (this.data.length) events.push(this.data.join("\n"));
      this.data = [];
      return;
    }
    if (line.startsWith(":")) return; // a comment: the server's heartbeat (": ping")
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    // `event:`, `id:` and `retry:` are unused: the event type is inside the JSON.
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
 * Yield the event objects of a streaming response, in order, as they arrive.
 * Ends at `data: [DONE]` (SSE) or at the end of the body. Throws on a malformed payload and
 * rethrows the AbortError when the caller aborts the fetch.
 */
export async function* readEvents(response) {
  const ndjson = (response.headers.get("content-type") || "").includes("ndjson");
  const parser = ndjson ? new NDJSONParser() : new SSEParser();
  const reader = response.body.getReader();
  // `stream: true` keeps a multi-byte UTF-8 character that is split across chunks intact.
  const decoder = new TextDecoder();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      const payloads = done
        ? [...parser.push(decoder.decode()), ...parser.finish()]
        : parser.push(decoder.decode(value, { stream: true }));
      for (const payload of payloads) {
        if (payload === "[DONE]") return;
        yield JSON.parse(payload);
      }
      if (done) return;
    }
  } finally {
    // Stopping early (break, abort, error) cancels the body, which closes the connection.
    reader.cancel().catch(() => {});
  }
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

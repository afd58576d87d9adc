// The Vercel AI SDK against POST /api/chat with no options but the URL: `Chat` (AbstractChat, what
// useChat wraps) and DefaultChatTransport + readUIMessageStream, reading the UI message stream.
import assert from "node:assert/strict";
import { test } from "node:test";
import { AbstractChat, DefaultChatTransport, readUIMessageStream } from "ai";

const APP = process.env.APP_URL;
const API = `${APP}/api/chat`;

/** The chat state useChat keeps in React, as plain fields. */
class PlainState {
  constructor(messages = []) {
    this.status = "ready";
    this.error = undefined;
    this.messages = messages;
  }
  pushMessage(message) {
    this.messages = this.messages.concat(message);
  }
  popMessage() {
    this.messages = this.messages.slice(0, -1);
  }
  replaceMessage(index, message) {
    this.messages = [...this.messages.slice(0, index), message, ...this.messages.slice(index + 1)];
  }
  snapshot(thing) {
    return structuredClone(thing);
  }
}

class Chat extends AbstractChat {
  constructor(options = {}) {
    super({ ...options, state: new PlainState(options.messages) });
  }
}

/** A fetch that keeps the raw response bytes (and headers) while the SDK reads the same stream. */
function recordingFetch() {
  const seen = { bytes: "", headers: undefined, status: undefined, done: undefined };
  let finish;
  seen.done = new Promise((resolve) => (finish = resolve));
  const fetchAndRecord = async (url, init) => {
    const response = await fetch(url, init);
    seen.headers = response.headers;
    seen.status = response.status;
    if (!response.body) {
      finish();
      return response;
    }
    const [mine, theirs] = response.body.tee();
    (async () => {
      const reader = mine.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        seen.bytes += value;
      }
      finish();
    })();
    return new Response(theirs, { status: response.status, headers: response.headers });
  };
  return { fetch: fetchAndRecord, seen };
}

function userMessage(text, id = "u1") {
  return { id, role: "user", parts: [{ type: "text", text }] };
}

/** transport.sendMessages(...) read to the end by readUIMessageStream: the last snapshot and errors. */
async function assemble(transport, messages, extra = {}) {
  const stream = await transport.sendMessages({
    chatId: "chat-1",
    messages,
    trigger: "submit-message",
    messageId: undefined,
    abortSignal: undefined,
    ...extra,
  });
  const errors = [];
  let message;
  for await (const snapshot of readUIMessageStream({ stream, onError: (e) => errors.push(e) })) {
    message = snapshot;
  }
  return { message, errors };
}

const text = (message) =>
  message.parts
    .filter((p) => p.type === "text")
    .map((p) => p.text)
    .join("");

test("useChat's Chat with no options but the URL: streamed text, usage as message metadata", async () => {
  const { fetch, seen } = recordingFetch();
  const chat = new Chat({ transport: new DefaultChatTransport({ api: API, fetch }) });
  await chat.sendMessage({ text: "hello from the ai sdk" });
  await seen.done;
  assert.equal(chat.status, "ready", chat.error?.message);
  assert.equal(chat.messages.length, 2);
  const answer = chat.messages[1];
  assert.equal(answer.role, "assistant");
  assert.match(text(answer), /hello from the ai sdk/);
  assert.ok(answer.parts.every((p) => p.type !== "text" || p.state === "done"));
  // `start` carries the request id as the message id, `finish` the usage.
  assert.equal(answer.id, seen.headers.get("x-request-id"));
  assert.equal(seen.headers.get("x-vercel-ai-ui-message-stream"), "v1");
  assert.equal(answer.metadata.chain, "chat");
  assert.equal(answer.metadata.deployment, "gpt-4o-mini");
  assert.equal(answer.metadata.finish_reason, "stop");
  assert.ok(answer.metadata.usage.total_tokens > 0);
  assert.ok(answer.metadata.model);
  assert.ok(seen.bytes.endsWith("data: [DONE]\n\n"));

  // The second turn sends the whole history back (the assistant's text parts included).
  await chat.sendMessage({ text: "and once more" });
  assert.equal(chat.status, "ready", chat.error?.message);
  assert.equal(chat.messages.length, 4);
  // system prompt + user + assistant + user, as the simulator counts them
  assert.match(text(chat.messages[3]), /and once more.*\(4 messages received\)/s);
});

test("regenerate sends trigger regenerate-message and replaces the answer", async () => {
  const chat = new Chat({ transport: new DefaultChatTransport({ api: API }) });
  await chat.sendMessage({ text: "say it twice" });
  const first = chat.messages[1].id;
  await chat.regenerate();
  assert.equal(chat.status, "ready", chat.error?.message);
  assert.equal(chat.messages.length, 2);
  assert.notEqual(chat.messages[1].id, first);
  assert.match(text(chat.messages[1]), /say it twice/);
});

test("our options ride in the transport's body: one deployment by name", async () => {
  const chat = new Chat({ transport: new DefaultChatTransport({ api: API, body: { deployment: "gpt-4o" } }) });
  await chat.sendMessage({ text: "which one answers?" });
  assert.equal(chat.status, "ready", chat.error?.message);
  assert.equal(chat.messages[1].metadata.deployment, "gpt-4o");
});

test("tools: the chain's server-side calls become tool parts with input and output", async () => {
  const chat = new Chat({ transport: new DefaultChatTransport({ api: API, body: { chain: "tools" } }) });
  await chat.sendMessage({ text: "What is 12 * (3 + 4)?" });
  assert.equal(chat.status, "ready", chat.error?.message);
  const answer = chat.messages[1];
  const call = answer.parts.find((p) => p.type === "tool-calculator");
  assert.ok(call, JSON.stringify(answer.parts));
  assert.equal(call.state, "output-available");
  assert.deepEqual(call.input, { expression: "12 * (3 + 4)" });
  assert.equal(call.output, "84");
  assert.ok(call.toolCallId);
  assert.ok(text(answer).length > 0);
  assert.equal(answer.metadata.chain, "tools");
});

test("tools: a failing tool is a tool part in output-error, and the answer goes on", async () => {
  const transport = new DefaultChatTransport({ api: API, body: { chain: "tools" } });
  const { message, errors } = await assemble(transport, [userMessage("What is 1/0?")]);
  assert.deepEqual(errors, []);
  const call = message.parts.find((p) => p.type === "tool-calculator");
  assert.equal(call.state, "output-error");
  assert.match(call.errorText, /division by zero/);
  assert.equal(message.metadata.finish_reason, "stop");
});

test("rag: progress as a data-progress part, citations as source-document parts", async () => {
  const transport = new DefaultChatTransport({ api: API, body: { chain: "rag" } });
  const { message, errors } = await assemble(transport, [userMessage("How do heartbeats keep streams open?")]);
  assert.deepEqual(errors, []);
  const sources = message.parts.filter((p) => p.type === "source-document");
  assert.ok(sources.length > 0);
  assert.equal(sources[0].sourceId, "1");
  assert.equal(sources[0].title, "Heartbeats keep idle streams open");
  assert.equal(sources[0].filename, "docs/heartbeats.txt");
  assert.equal(sources[0].mediaType, "text/plain");
  assert.equal(sources[0].providerMetadata.chatstream.id, "heartbeats");
  const progress = message.parts.filter((p) => p.type === "data-progress");
  assert.equal(progress.length, 1); // one part, updated in place through the stages
  assert.equal(progress[0].data.stage, "generating");
  assert.ok(text(message).length > 0);
});

test("a mid-stream failure: Chat shows the error, keeps the partial text, and the stream ends", async () => {
  const { fetch, seen } = recordingFetch();
  const chat = new Chat({ transport: new DefaultChatTransport({ api: API, fetch }) });
  await chat.sendMessage({ text: "break please [sim:drop-after=3]" });
  assert.equal(chat.status, "error");
  assert.equal(chat.error.message, "the connection to the model service broke mid-answer");
  const answer = chat.messages[1];
  assert.ok(text(answer).length > 0);
  assert.equal(answer.metadata.error.code, "upstream_interrupted");
  assert.equal(answer.metadata.error.retryable, true);
  await seen.done;
  assert.ok(seen.bytes.endsWith("data: [DONE]\n\n"));

  // readUIMessageStream reads past the error part to the finish part.
  const transport = new DefaultChatTransport({ api: API });
  const { message, errors } = await assemble(transport, [userMessage("break again [sim:drop-after=3]")]);
  assert.equal(errors.length, 1);
  assert.equal(errors[0].message, "the connection to the model service broke mid-answer");
  assert.equal(message.metadata.finish_reason, "error");
});

test("a 400 before the stream: the transport throws with our JSON error naming the field", async () => {
  const transport = new DefaultChatTransport({ api: API });
  const file = { id: "u1", role: "user", parts: [{ type: "file", mediaType: "image/png", url: "data:," }] };
  await assert.rejects(assemble(transport, [file]), (error) => {
    const body = JSON.parse(error.message);
    assert.equal(body.error.code, "unsupported_value");
    assert.equal(body.error.param, "messages[0].parts[0]");
    assert.match(body.error.message, /file parts are not supported/);
    return true;
  });

  const chat = new Chat({ transport: new DefaultChatTransport({ api: API, body: { chain: "nope" } }) });
  await chat.sendMessage({ text: "hi" });
  assert.equal(chat.status, "error");
  assert.equal(JSON.parse(chat.error.message).error.code, "unknown_chain");
});

test("a 429 before the stream: the transport throws with rate_limited and retry_after", async () => {
  const transport = new DefaultChatTransport({ api: API });
  await assert.rejects(assemble(transport, [userMessage("busy [sim:429]")]), (error) => {
    const body = JSON.parse(error.message);
    assert.equal(body.error.code, "rate_limited");
    assert.equal(body.error.retryable, true);
    return true;
  });
});

test("heartbeats: `: ping` lines are on the wire and the SDK reads past them", async () => {
  const { fetch, seen } = recordingFetch();
  const chat = new Chat({ transport: new DefaultChatTransport({ api: API, fetch }) });
  await chat.sendMessage({ text: "take your time [sim:slow-first-token=1500]" });
  await seen.done;
  assert.match(seen.bytes, /^: ping\n\n/m);
  assert.equal(chat.status, "ready", chat.error?.message);
  assert.match(text(chat.messages[1]), /take your time/);
  assert.equal(chat.messages[1].metadata.finish_reason, "stop");
});

test("resume: a chat with no running stream gets 204, so resumeStream finds nothing and the chat is ready", async () => {
  const transport = new DefaultChatTransport({ api: API });
  assert.equal(await transport.reconnectToStream({ chatId: "chat-1" }), null);
  const chat = new Chat({ id: "chat-2", transport });
  await chat.resumeStream();
  assert.equal(chat.status, "ready");
  assert.equal(chat.messages.length, 0);
});

test("resume: a page that went away mid-answer gets the whole message once from resumeStream", async () => {
  const chatId = `chat-resume-${Date.now()}`;
  const prompt = "[sim:tokens=60;token-delay=40] resume me";
  // The first page: a resumable request, abandoned once some text arrived (the tab closed).
  const first = new Chat({
    id: chatId,
    transport: new DefaultChatTransport({ api: API, body: { resumable: true } }),
  });
  const sending = first.sendMessage({ text: prompt });
  for (let i = 0; i < 200 && !(first.messages[1] && text(first.messages[1]).length > 0); i++) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  assert.ok(text(first.messages[1]).length > 0, "some text before the page went away");
  await first.stop(); // aborts the fetch only: the run goes on for CHAT_RESUME_GRACE_SECONDS
  await sending;
  const partial = text(first.messages[1]);
  // The reloaded page has the user's message (persisted) and asks for the chat's running stream.
  const second = new Chat({
    id: chatId,
    transport: new DefaultChatTransport({ api: API }),
    messages: [first.messages[0]],
  });
  await second.resumeStream();
  assert.equal(second.status, "ready", second.error?.message);
  assert.equal(second.messages.length, 2);
  const whole = text(second.messages[1]);
  assert.ok(whole.startsWith(partial), "the resumed message begins with what the first page showed");
  assert.ok(whole.length > partial.length, "and goes on to the end");
  assert.equal(second.messages[1].metadata.finish_reason, "stop");
  assert.equal(second.messages[1].metadata.usage.completion_tokens, 60);
  // Finished: the next page load finds nothing to resume.
  assert.equal(await new DefaultChatTransport({ api: API }).reconnectToStream({ chatId }), null);
});
// AG-UI's own client, `HttpAgent` from @ag-ui/client, against POST /api/ag-ui: the library validates
// every event against its schema (and warns about any field it does not know), checks the event order
// (messages and tool calls opened before they are used, closed before RUN_FINISHED) and builds
// `agent.messages` from the stream, so passing here means an AG-UI frontend works unchanged.
import assert from "node:assert/strict";
import { test } from "node:test";
import { HttpAgent } from "@ag-ui/client";

const URL = `${process.env.APP_URL}/api/ag-ui`;
let nextId = 0;

/** Run one turn; resolves to the events, the agent, the SDK's warnings and the raw body text. */
async function run(prompt, { forwardedProps, history = [] } = {}) {
  let raw = "";
  // A fetch that hands HttpAgent the body while keeping a copy, to see the bytes it parsed.
  const fetchCopy = async (url, init) => {
    const response = await fetch(url, init);
    if (!response.body) return response;
    const [mine, copy] = response.body.tee();
    const reading = (async () => {
      const reader = copy.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        raw += value;
      }
    })();
    reading.catch(() => {});
    return new Response(mine, { status: response.status, headers: response.headers });
  };
  const agent = new HttpAgent({
    url: URL,
    fetch: fetchCopy,
    initialMessages: [...history, { id: `u${++nextId}`, role: "user", content: prompt }],
  });
  const events = [];
  const warnings = [];
  const warn = console.warn;
  console.warn = (...args) => warnings.push(args.join(" "));
  try {
    await agent.runAgent({ forwardedProps }, { onEvent: ({ event }) => void events.push(event) });
  } finally {
    console.warn = warn;
  }
  return { events, agent, warnings, raw };
}

const types = (events) => events.map((e) => e.type);

function assertWellFormedRun(events) {
  assert.equal(events[0].type, "RUN_STARTED");
  assert.equal(events.at(-1).type, "RUN_FINISHED");
  const open = new Set();
  for (const e of events) {
    if (e.type === "TEXT_MESSAGE_START") open.add(e.messageId);
    if (e.type === "TEXT_MESSAGE_CONTENT") assert.ok(open.has(e.messageId), "content of an open message");
    if (e.type === "TEXT_MESSAGE_END") open.delete(e.messageId);
  }
  assert.equal(open.size, 0, "every message closed before RUN_FINISHED");
}

test("text: RUN_STARTED, one assistant message streamed in pieces, RUN_FINISHED with usage", async () => {
  const { events, agent, warnings } = await run("hello from ag-ui");
  assert.deepEqual(warnings, [], "every event matches the AG-UI schema");
  assertWellFormedRun(events);
  const started = events[0];
  assert.equal(started.threadId, agent.threadId);
  const contents = events.filter((e) => e.type === "TEXT_MESSAGE_CONTENT");
  assert.ok(contents.length > 1, "the answer streams in pieces");
  const answer = agent.messages.at(-1);
  assert.equal(answer.role, "assistant");
  assert.equal(answer.content, contents.map((e) => e.delta).join(""));
  assert.match(answer.content, /hello from ag-ui/);
  const finished = events.at(-1);
  assert.equal(finished.usage.length, 1);
  assert.ok(finished.usage[0].outputTokens > 0 && finished.usage[0].inputTokens > 0);
  assert.equal(finished.metadata.finishReason, "stop");
});

test("tools: the server's tool call and its result become the agent's messages", async () => {
  const { events, agent, warnings } = await run("What is 12 * (3 + 4)?", { forwardedProps: { chain: "tools" } });
  assert.deepEqual(warnings, []);
  assertWellFormedRun(events);
  const order = types(events).filter((t) => t.startsWith("TOOL_CALL") || t === "TEXT_MESSAGE_START");
  assert.equal(order[0], "TOOL_CALL_START");
  assert.ok(order.indexOf("TOOL_CALL_END") < order.indexOf("TOOL_CALL_RESULT"));
  assert.ok(order.indexOf("TOOL_CALL_RESULT") < order.indexOf("TEXT_MESSAGE_START"), "the answer follows");
  const [call] = agent.messages.find((m) => m.role === "assistant" && m.toolCalls?.length).toolCalls;
  assert.equal(call.function.name, "calculator");
  assert.equal(JSON.parse(call.function.arguments).expression, "12 * (3 + 4)");
  const result = agent.messages.find((m) => m.role === "tool");
  assert.equal(result.toolCallId, call.id);
  assert.equal(result.content, "84");
  assert.match(agent.messages.at(-1).content, /84/);

  // The next turn sends that history back (tool call, tool message): it must be accepted.
  const history = agent.messages.map((m) => structuredClone(m));
  const again = await run("And 2 + 2?", { forwardedProps: { chain: "tools" }, history });
  assert.deepEqual(again.warnings, []);
  assertWellFormedRun(again.events);
});

test("sources: rag progress as steps, the passages as a CUSTOM citations event", async () => {
  const { events, agent, warnings } = await run("How do heartbeats keep streams open?", {
    forwardedProps: { chain: "rag" },
  });
  assert.deepEqual(warnings, []);
  assertWellFormedRun(events);
  const citations = events.find((e) => e.type === "CUSTOM" && e.name === "citations");
  assert.ok(citations, "a citations event");
  assert.ok(citations.value.length > 0);
  assert.equal(citations.value[0].number, 1);
  assert.match(citations.value[0].source, /heartbeats/);
  const steps = events.filter((e) => e.type === "STEP_STARTED").map((e) => e.stepName);
  assert.deepEqual(steps, ["searching", "found", "generating"]);
  assert.equal(events.filter((e) => e.type === "STEP_FINISHED").length, 3, "every step finished");
  assert.ok(agent.messages.at(-1).content.length > 0);
});

test("a mid-stream failure: text, then RUN_ERROR as the last event (no RUN_FINISHED)", async () => {
  const errors = [];
  const { events, agent } = await run("break please [sim:drop-after=3]");
  for (const e of events) if (e.type === "RUN_ERROR") errors.push(e);
  assert.equal(events[0].type, "RUN_STARTED");
  assert.equal(events.at(-1).type, "RUN_ERROR");
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "upstream_interrupted");
  assert.equal(errors[0].metadata.retryable, true);
  assert.ok(!types(events).includes("RUN_FINISHED"));
  assert.ok(events.filter((e) => e.type === "TEXT_MESSAGE_CONTENT").length > 0, "some text came first");
  assert.ok(agent.messages.at(-1).content.length > 0, "the partial answer is kept");
});

test("a 400 rejects runAgent with the status and a RUN_ERROR-shaped payload naming the field", async () => {
  const error = console.error;
  console.error = () => {}; // HttpAgent logs the failure it then throws
  try {
    await assert.rejects(run("hi", { forwardedProps: { max_tokens: 0 } }), (err) => {
      assert.equal(err.status, 400);
      assert.match(err.message, /^HTTP 400: .*forwardedProps\.max_tokens/);
      assert.equal(err.payload.type, "RUN_ERROR");
      assert.equal(err.payload.code, "option_out_of_range");
      assert.equal(err.payload.metadata.param, "forwardedProps.max_tokens");
      return true;
    });
    await assert.rejects(run("too busy [sim:429]"), (err) => {
      assert.equal(err.status, 429);
      assert.equal(err.payload.code, "rate_limited");
      assert.ok(err.payload.metadata.retryAfter > 0);
      return true;
    });
  } finally {
    console.error = error;
  }
});

test("heartbeats: SSE comments while the model thinks, ignored by the client", async () => {
  const { events, agent, warnings, raw } = await run("slow one [sim:slow-first-token=1500]");
  assert.deepEqual(warnings, []);
  assertWellFormedRun(events);
  assert.ok(raw.split("\n\n").filter((b) => b === ": ping").length >= 2, "heartbeats were on the wire");
  assert.ok(!raw.includes("[DONE]"), "AG-UI streams end with RUN_FINISHED, not [DONE]");
  assert.match(agent.messages.at(-1).content, /slow one/);
});

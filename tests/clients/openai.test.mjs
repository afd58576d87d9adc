// openai-node against the app's OpenAI-compatible API: baseURL = APP_URL + "/api/v1", nothing else.
import assert from "node:assert/strict";
import { test } from "node:test";
import OpenAI from "openai";

const APP = process.env.APP_URL;
// The documented Azure setup: the function key as x-functions-key (the host ignores Bearer keys).
const client = new OpenAI({
  baseURL: `${APP}/api/v1`,
  apiKey: "unused",
  defaultHeaders: { "x-functions-key": "local-key-ignored" },
  maxRetries: 0,
  timeout: 60_000,
});
const user = (content) => [{ role: "user", content }];

async function collect(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return chunks;
}
const textOf = (chunks) => chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("");

test("a streamed answer arrives as chat.completion.chunk deltas", async () => {
  const chunks = await collect(
    await client.chat.completions.create({ model: "gpt-4o", messages: user("hello from node"), stream: true }),
  );
  assert.equal(chunks[0].choices[0].delta.role, "assistant");
  assert.match(textOf(chunks), /hello from node/);
  assert.ok(chunks.filter((c) => c.choices[0]?.delta?.content).length > 1);
  assert.equal(chunks.at(-1).choices[0].finish_reason, "stop");
  assert.ok(chunks.every((c) => c.model === "gpt-4o" && c.object === "chat.completion.chunk"));
  assert.ok(chunks[0].id.startsWith("chatcmpl-"));
});

test("a whole answer is a chat.completion", async () => {
  const completion = await client.chat.completions.create({
    model: "gpt-4o-mini",
    messages: user("all at once"),
  });
  assert.equal(completion.object, "chat.completion");
  assert.match(completion.choices[0].message.content, /all at once/);
  assert.equal(completion.choices[0].finish_reason, "stop");
  assert.ok(completion.usage.completion_tokens > 0);
});

test("stream_options.include_usage adds a last chunk with usage and no choices", async () => {
  const chunks = await collect(
    await client.chat.completions.create({
      model: "gpt-4o-mini",
      messages: user("usage please"),
      stream: true,
      stream_options: { include_usage: true },
    }),
  );
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, []);
  assert.equal(last.usage.total_tokens, last.usage.prompt_tokens + last.usage.completion_tokens);
  assert.ok(last.usage.completion_tokens > 0);
});

test("the tools chain runs its tools on the server: text only, never tool_calls", async () => {
  const chunks = await collect(
    await client.chat.completions.create({
      model: "gpt-4o-mini",
      messages: user("What is 6*7?"),
      stream: true,
      chain: "tools", // the app's extension field, sent as is
    }),
  );
  assert.ok(chunks.every((c) => !c.choices[0]?.delta?.tool_calls));
  assert.match(textOf(chunks), /42/);
  assert.equal(chunks.at(-1).choices[0].finish_reason, "stop");
});

test("the rag chain answers with text", async () => {
  const chunks = await collect(
    await client.chat.completions.create({
      model: "gpt-4o-mini",
      messages: user("How do retries work?"),
      stream: true,
      chain: "rag",
    }),
  );
  assert.ok(textOf(chunks).trim().length > 0);
  assert.equal(chunks.at(-1).choices[0].finish_reason, "stop");
});

test("a failure mid-stream throws APIError from the iteration, after some text", async () => {
  const stream = await client.chat.completions.create({
    model: "gpt-4o-mini",
    messages: user("break [sim:drop-after=3]"),
    stream: true,
  });
  let text = "";
  await assert.rejects(
    async () => {
      for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
    },
    (err) => {
      assert.ok(err instanceof OpenAI.APIError);
      assert.equal(err.code, "upstream_interrupted");
      assert.match(err.message, /broke mid-answer/);
      return true;
    },
  );
  assert.ok(text.length > 0);
});

test("an option the app would not honour is a BadRequestError with the app's message", async () => {
  await assert.rejects(
    client.chat.completions.create({
      model: "gpt-4o-mini",
      messages: user("hi"),
      tools: [{ type: "function", function: { name: "f", parameters: {} } }],
    }),
    (err) => {
      assert.ok(err instanceof OpenAI.BadRequestError);
      assert.equal(err.status, 400);
      assert.equal(err.code, "unsupported_parameter");
      assert.equal(err.param, "tools");
      assert.match(err.message, /runs its own tools on the server/);
      return true;
    },
  );
});

test("an unknown model is a NotFoundError with code model_not_found", async () => {
  await assert.rejects(
    client.chat.completions.create({ model: "gpt-nope", messages: user("hi"), stream: true }),
    (err) => err instanceof OpenAI.NotFoundError && err.code === "model_not_found",
  );
});

test("heartbeats while the model is silent are skipped by the SDK, and the answer completes", async () => {
  const chunks = await collect(
    await client.chat.completions.create({
      model: "gpt-4o-mini",
      messages: user("take your time [sim:slow-first-token=1500]"),
      stream: true,
    }),
  );
  assert.match(textOf(chunks), /take your time/);
  assert.equal(chunks.at(-1).choices[0].finish_reason, "stop");
});

test("models.list() gives the allowed deployments", async () => {
  const ids = [];
  for await (const model of client.models.list()) ids.push(model.id);
  assert.deepEqual(ids, ["gpt-4o-mini", "gpt-4o"]);
  assert.equal((await client.models.retrieve("gpt-4o")).id, "gpt-4o");
});

// The app's own protocol read the way the README tells a browser to: fetch + a stream reader.
import assert from "node:assert/strict";
import { test } from "node:test";

const APP = process.env.APP_URL;

async function events(body) {
  const response = await fetch(`${APP}/api/chat`, {
    method: "POST",
    headers: { "content-type": "application/json", accept: "text/event-stream" },
    body: JSON.stringify(body),
  });
  assert.equal(response.status, 200);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    text += value;
  }
  const blocks = text.split("\n\n").filter((b) => b.startsWith("data: "));
  assert.equal(blocks.at(-1), "data: [DONE]");
  return blocks.slice(0, -1).map((b) => JSON.parse(b.slice(6)));
}

test("a fetch reader gets start, deltas with their deployment, and end", async () => {
  const got = await events({ user: "hello from node" });
  assert.equal(got[0].type, "start");
  assert.equal(got.at(-1).type, "end");
  assert.equal(got.at(-1).finish_reason, "stop");
  const deltas = got.filter((e) => e.type === "delta");
  assert.ok(deltas.length > 1);
  assert.ok(deltas.every((e) => e.deployment === "gpt-4o-mini"));
  assert.match(deltas.map((e) => e.delta_content).join(""), /hello from node/);
});

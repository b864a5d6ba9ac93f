// Browser test of the hub's demo page, run by hub/tests/clients.rs against a real hub and
// database (HUB_URL). Two browser contexts are two independent users/tabs: a message sent in one
// appears live in the other; a fork at a message shows the branch with the inherited messages.
// Uses Debian's /usr/bin/chromium through playwright-core: nothing is downloaded.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const HUB_URL = process.env.HUB_URL;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const TIMEOUT = 15000;
let browser;

before(async () => {
  assert.ok(HUB_URL, "HUB_URL must point at a running hub");
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => { if (browser) await browser.close(); });

async function openPage(hash = "") {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(HUB_URL + "/" + hash);
  await page.locator("#status.connected").waitFor();
  return { context, page, errors };
}

const transcriptItem = (page, text) => page.locator("#transcript li", { hasText: text });

test("a message sent in one tab appears live in the other; forks show the branch", async () => {
  const title = "E2E chat " + Date.now();
  const alice = await openPage();
  await alice.page.fill("#new-title", title);
  await alice.page.click("#create");
  await alice.page.locator("#session-title", { hasText: title }).waitFor();
  const sessionId = new URL(alice.page.url()).hash.replace("#session=", "");
  assert.match(sessionId, /^[0-9a-f-]{36}$/);

  // the second user picks the session from the list
  const bob = await openPage();
  await bob.page.locator(`#sessions button[data-session-id="${sessionId}"]`).click();
  await bob.page.locator("#session-title", { hasText: title }).waitFor();

  // Alice sends; Bob sees it arrive without reloading, and so does Alice
  await alice.page.fill("#role", "alice");
  await alice.page.fill("#message", "hello from Alice <b>not bold</b>");
  await alice.page.click("#send");
  await transcriptItem(bob.page, "hello from Alice").waitFor();
  await transcriptItem(alice.page, "hello from Alice").waitFor();
  // content is shown as text, never as HTML
  assert.equal(await bob.page.locator("#transcript b").count(), 0);
  assert.equal(await transcriptItem(bob.page, "hello from Alice").locator(".role").textContent(), "alice");

  // Bob answers with Enter; Alice sees it
  await bob.page.fill("#role", "bob");
  await bob.page.fill("#message", "hi Alice, Bob here");
  await bob.page.press("#message", "Enter");
  await transcriptItem(alice.page, "Bob here").waitFor();
  assert.equal(await alice.page.locator("#transcript li").count(), 2);

  // Alice forks at her own (first) message: the branch shows it, not Bob's reply
  await transcriptItem(alice.page, "hello from Alice").locator("button.fork").click();
  await alice.page.locator("#session-title", { hasText: "Fork of " + title + " at #1" }).waitFor();
  await transcriptItem(alice.page, "hello from Alice").waitFor();
  assert.equal(await alice.page.locator("#transcript li").count(), 1);
  assert.equal(await alice.page.locator("#transcript li.inherited").count(), 1);
  const branchId = new URL(alice.page.url()).hash.replace("#session=", "");
  assert.notEqual(branchId, sessionId);

  // a message in the branch stays in the branch
  await alice.page.fill("#message", "only in the branch");
  await alice.page.click("#send");
  await transcriptItem(alice.page, "only in the branch").waitFor();
  assert.equal(await alice.page.locator("#transcript li").count(), 2);

  // Bob, still on the original session, does not get it, and sees the fork in his list
  await bob.page.locator("#sessions button", { hasText: "Fork of " + title }).waitFor();
  assert.equal(await transcriptItem(bob.page, "only in the branch").count(), 0);
  assert.equal(await bob.page.locator("#transcript li").count(), 2);

  // a third tab opened on the branch URL shows the branch transcript
  const carol = await openPage("#session=" + branchId);
  await transcriptItem(carol.page, "only in the branch").waitFor();
  assert.equal(await carol.page.locator("#transcript li").count(), 2);

  // Bob searches (by words and meaning: the test's database has an embedding endpoint); a result
  // opens its session with the message marked
  await bob.page.locator(`#sessions button[data-session-id="${branchId}"]`).click();
  await bob.page.locator("#session-title", { hasText: "Fork of " + title }).waitFor();
  await bob.page.fill("#search", "Alice hello");
  await bob.page.click("#search-button");
  await bob.page.locator("#search-mode", { hasText: "meaning" }).waitFor();
  const hit = bob.page.locator("#results button", { hasText: "hello from Alice" }).first();
  await hit.click();
  await bob.page.waitForURL((url) => url.hash === "#session=" + sessionId);
  await bob.page.locator("#transcript li.found", { hasText: "hello from Alice" }).waitFor();
  assert.equal(await bob.page.locator("#transcript li.found").count(), 1);

  for (const user of [alice, bob, carol]) {
    assert.deepEqual(user.errors, [], "no JavaScript errors");
    await user.context.close();
  }
});

test("the specification's JavaScript client: connect with ?c=, publish, receive; sub later", async () => {
  const { context, page, errors } = await openPage();
  const received = await page.evaluate(async () => {
    // The README's version of the specification's example; the URL points at this hub.
    const ws = new WebSocket("ws://" + location.host + "/ws?c=channel1&c=updates");
    const messages = [];
    const got = (predicate) => new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("timeout; got " + JSON.stringify(messages))), 10000);
      const check = () => { const m = messages.find(predicate); if (m) { clearTimeout(timer); resolve(m); } else setTimeout(check, 20); };
      check();
    });
    ws.onmessage = (event) => { const data = JSON.parse(event.data); console.log("Received:", data); messages.push(data); };
    function publish(channel, content) {
      ws.send(JSON.stringify({ method: "pub", params: { channel: channel, content: content } }));
    }
    await new Promise((resolve) => { ws.onopen = resolve; });
    publish("updates", "Hello, world!");
    const first = await got((m) => m.channel === "updates");
    ws.send(JSON.stringify({ method: "sub", params: { channels: ["new_channel"] } }));
    await got((m) => m.method === "sub" && m.result);
    publish("new_channel", { nested: true });
    const second = await got((m) => m.channel === "new_channel");
    ws.close();
    return [first, second];
  });
  assert.deepEqual(received, [
    { channel: "updates", payload: { content: "Hello, world!" } },
    { channel: "new_channel", payload: { content: { nested: true } } },
  ]);
  assert.deepEqual(errors, []);
  await context.close();
});

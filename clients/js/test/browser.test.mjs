// Headless Chromium (Debian's `chromium`, driven by playwright-core) runs the example app
// (example/app.tsx, on @roomcast/client/react) as two users in two browser contexts, against the
// real gateway behind a TCP proxy that stands in for the network. Screenshots go to
// clients/js/test-results/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";

import { RESULTS, launchChromium, noBrowser } from "./util.mjs";
import { API_KEY, SECRET, eventually, startGateway, tcpProxy } from "../../../js-tests/helpers.mjs";
import { startExample } from "../example/server.mjs";

let gw;
let lb;
let example;
let browser;

before(async () => {
  if (noBrowser) return;
  gw = await startGateway({ ROOMCAST_PRESENCE_GRACE: "200ms" });
  lb = await tcpProxy({ host: "127.0.0.1", port: Number(new URL(gw.url).port) });
  example = await startExample({ secret: SECRET, tenant: "t1" });
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
  await example?.close();
  lb?.close();
  await gw?.stop();
});

/** A browser context (its own storage, as another person's browser) with the app open as `user`. */
async function open(user) {
  const context = await browser.newContext({ viewport: { width: 900, height: 520 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(e.message));
  await page.goto(`${example.url}/?user=${user}&channel=c1&gateway=${encodeURIComponent(lb.url)}`);
  return { context, page, problems };
}

const texts = (page, testid) => page.locator(`[data-testid=${testid}] li`).allTextContents();
const text = (page, testid) => page.locator(`[data-testid=${testid}]`).textContent();

async function publish(text) {
  const res = await fetch(`${gw.apiUrl}/v1/publish`, {
    method: "POST",
    headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ tenant: "t1", channel: "c1", event: "message", data: { text } }),
  });
  assert.equal(res.status, 200, await res.text());
}

test("two users see each other, type, get published events, and lose nothing when the network drops", { skip: noBrowser }, async () => {
  const ada = await open("ada");
  const bob = await open("bob");
  try {
    for (const { page } of [ada, bob]) {
      await eventually(async () => (await text(page, "state")) === "connected", "connected");
      await eventually(async () => (await texts(page, "presence")).map((t) => t.split(" ")[0]).sort().join() === "ada,bob", "both users listed");
    }

    // Bob types: Ada sees it; Bob does not see himself typing.
    await bob.page.locator("[data-testid=draft]").pressSequentially("hello ada", { delay: 20 });
    await eventually(async () => (await text(ada.page, "typing")) === "bob is typing…", "ada to see bob typing");
    assert.equal(await text(bob.page, "typing"), "");

    // Bob sends: a client publish, with `from`; and one from the backend over HTTP.
    await bob.page.locator("[data-testid=draft]").press("Enter");
    await publish("from the backend");
    for (const { page } of [ada, bob]) {
      await eventually(async () => (await texts(page, "messages")).length === 2, "both messages");
      assert.deepEqual(await texts(page, "messages"), ["bob hello ada", "server from the backend"]);
    }
    await eventually(async () => (await text(ada.page, "typing")) === "", "the indicator gone once bob sent");
    await ada.page.screenshot({ path: path.join(RESULTS, "example-ada.png") });
    await bob.page.screenshot({ path: path.join(RESULTS, "example-bob.png") });

    // The network goes: every connection cut, new ones refused. Events published meanwhile are
    // in history; when it comes back, both apps rejoin with `since` and get each once, in order.
    lb.down();
    for (const { page } of [ada, bob]) {
      await eventually(async () => (await text(page, "state")) !== "connected", "the apps to notice");
    }
    await ada.page.screenshot({ path: path.join(RESULTS, "example-offline.png") });
    for (let n = 1; n <= 3; n++) await publish(`missed ${n}`);
    lb.up();
    const expected = ["bob hello ada", "server from the backend", "server missed 1", "server missed 2", "server missed 3"];
    for (const { page } of [ada, bob]) {
      await eventually(async () => (await text(page, "state")) === "connected", "reconnected", 20_000);
      await eventually(async () => (await texts(page, "messages")).length >= expected.length, "the missed messages");
      assert.deepEqual(await texts(page, "messages"), expected);
    }
    await ada.page.screenshot({ path: path.join(RESULTS, "example-recovered.png") });
    assert.deepEqual([...ada.problems, ...bob.problems], []);
  } finally {
    await ada.context.close();
    await bob.context.close();
  }
});

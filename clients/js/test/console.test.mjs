// The console (gateway/src/console.rs, its page built from console/app.tsx) in headless
// Chromium against the real gateway: signing in, a scoped token's single tenant, a room's live
// events (paused and resumed), presence and typing as a user comes and goes, the per-replica
// table, and a disconnect action. Screenshots go to clients/js/test-results/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";

import { RESULTS, launchChromium, noBrowser } from "./util.mjs";
import { API_KEY, WAIT_MS, connect, eventually, next, startGateway, userToken, withTimeout } from "../../../js-tests/helpers.mjs";

const ALL = "console-all-0123456789abcdef0123456789";
const SCOPED = "console-scoped-0123456789abcdef012345";

let gw;
let browser;

before(async () => {
  if (noBrowser) return;
  gw = await startGateway({ ROOMCAST_PRESENCE_GRACE: "200ms", ROOMCAST_CONSOLE_TOKENS: `${ALL},${SCOPED}:t1` });
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
  await gw?.stop();
});

/** The console in a fresh browser context; `hash` as a `--dev` link carries the token. */
async function open(hash = "") {
  const context = await browser.newContext({ viewport: { width: 1200, height: 720 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(e.message));
  // A Content-Security-Policy violation is reported on the console: the page must cause none.
  page.on("console", (m) => m.type() === "error" && /Content.Security.Policy|Refused to/i.test(m.text()) && problems.push(m.text()));
  await page.goto(`${gw.adminUrl}/console${hash}`);
  return { context, page, problems };
}

/** An element's text, or "" while it is not there (so `eventually` keeps trying). */
const text = (locator) => locator.textContent({ timeout: 1000 }).catch(() => "");

async function publish(event, data) {
  const res = await fetch(`${gw.apiUrl}/v1/publish`, {
    method: "POST",
    headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ tenant: "t1", channel: "c1", event, data }),
  });
  assert.equal(res.status, 200, await res.text());
}

test("a wrong token is refused at sign-in; the right one signs in", { skip: noBrowser }, async () => {
  const { context, page, problems } = await open();
  try {
    await page.getByLabel("Console token").fill("not-a-console-token-0123456789abcdef");
    await page.getByRole("button", { name: "Sign in" }).click();
    await eventually(async () => /unauthorized/.test((await text(page.locator(".error")))), "the refusal");
    await page.getByLabel("Console token").fill(ALL);
    await page.getByRole("button", { name: "Sign in" }).click();
    await eventually(async () => (await text(page.locator("header .scope"))) === "every tenant", "signed in");
    // An unscoped token names any tenant.
    await page.getByPlaceholder("tenant id").fill("t2");
    await page.getByRole("button", { name: "Watch" }).first().click();
    await eventually(async () => (await text(page.locator("aside h2")))?.startsWith("t2"), "watching t2");
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});

test("the console shows a room's live events, presence and typing, and disconnects a user", { skip: noBrowser }, async () => {
  // A --dev style link: the token in the fragment (never sent to the server), scoped to t1.
  const { context, page, problems } = await open(`#token=${SCOPED}`);
  let ada;
  try {
    await eventually(async () => (await text(page.locator("header .scope"))) === "scoped to t1", "signed in, scoped");
    assert.equal(new URL(page.url()).hash, "", "the token is out of the address bar");
    // Only its tenant to pick.
    assert.deepEqual(await page.locator("header select option").allTextContents(), ["t1"]);
    await eventually(async () => (await text(page.locator("aside .state"))) === "connected", "the observer connected");
    // This replica in the table, the observer counted as one.
    await eventually(async () => (await page.locator(".replicas tbody tr").count()) === 1, "the replica listed");
    await eventually(async () => (await text(page.locator(".replicas tbody td").nth(2))) === "1", "one observer");
    assert.equal(await page.locator(".replicas tbody td").nth(1).textContent(), "0", "the observer is not a connection of the application");

    await page.getByLabel("room id").fill("c1");
    await page.getByRole("button", { name: "Watch" }).click();
    await eventually(async () => (await text(page.locator(".watch h2 code"))) === "tenant:t1:channel:c1", "watching c1");

    // A user comes: presence (the observer itself is nobody), typing, then events.
    ada = await connect(gw.url, { auth: { token: userToken("t1", "ada") } });
    const joined = await withTimeout(new Promise((resolve) => ada.emit("join", { channel: "c1" }, resolve)), WAIT_MS, "ada's join");
    assert.equal(joined.ok, true, JSON.stringify(joined));
    await eventually(async () => (await page.locator(".presence li[data-user]").count()) === 1, "ada in presence");
    assert.equal(await page.locator(".presence li[data-user] b").textContent(), "ada");
    await eventually(async () => /^1 user, 1 connection$/.test((await text(page.locator(".occupancy")))), "occupancy", 15_000);
    ada.emit("typing", { channel: "c1", typing: true });
    await eventually(async () => (await text(page.locator(".typing"))) === "typing: ada", "ada typing");
    await publish("message", { text: "hello console" });
    await eventually(async () => (await page.locator(".tail li.event").count()) === 1, "the live event");
    assert.match(await page.locator(".tail li.event").first().textContent(), /message #1.*"text":"hello console"/);
    // The rooms list shows c1 with its user.
    await eventually(async () => /channel c1\s*1 user, 1 connection/.test(await text(page.locator("ul.rooms"))), "c1 listed", 15_000);
    await page.screenshot({ path: path.join(RESULTS, "console-live.png") });

    // Paused, events wait (counted); resumed, they show, newest first.
    await page.getByRole("button", { name: "Pause" }).click();
    await publish("message", { text: "while paused" });
    await eventually(async () => /Resume \(1 held\)/.test(await text(page.locator(".tail h3"))), "one held");
    assert.equal(await page.locator(".tail li.event").count(), 1);
    await page.getByRole("button", { name: /Resume/ }).click();
    await eventually(async () => (await page.locator(".tail li.event").count()) === 2, "the held event shown");
    assert.match(await page.locator(".tail li.event").first().textContent(), /while paused/);

    // The console's action: disconnect ada (through the control API's path).
    const kicked = next(ada, "roomcast:disconnect");
    await page.locator(".presence li[data-user=ada]").getByRole("button", { name: "Disconnect" }).click();
    const [notice] = await kicked;
    assert.equal(notice.code, "disconnected");
    await eventually(async () => /disconnected ada: 1 socket$/.test((await text(page.locator(".notice")))), "the answer");
    await eventually(async () => (await page.locator(".presence li[data-user]").count()) === 0, "ada gone from presence");
    await eventually(async () => /^0 users, 0 connections$/.test((await text(page.locator(".occupancy")))), "occupancy 0");
    await page.screenshot({ path: path.join(RESULTS, "console-after-disconnect.png") });
    assert.equal(await page.locator("aside .state").textContent(), "connected", "the observer stays");
    assert.deepEqual(problems, []);
  } finally {
    ada?.close();
    await context.close();
  }
});

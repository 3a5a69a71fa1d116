// The React bindings, rendered with react-dom into jsdom, against the real gateway binary.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { JSDOM } from "jsdom";

import { API_KEY, eventually, startGateway, userToken } from "../../../js-tests/helpers.mjs";
import { connect } from "../dist/index.js";

const dom = new JSDOM("<!doctype html><html><body></body></html>");
globalThis.window = dom.window;
globalThis.document = dom.window.document;
globalThis.navigator ??= dom.window.navigator;
// Updates come from the client's socket events, outside anything act() could wrap: render as an
// application does, and wait for the DOM.
globalThis.IS_REACT_ACT_ENVIRONMENT = false;
const React = await import("react");
const { createRoot } = await import("react-dom/client");
// After jsdom is installed: the bindings pick their layout effect by whether `window` exists.
const { RoomcastProvider, useConnectionState, useEvent, usePresence, useRoom, useTyping } = await import("../dist/react.js");
const h = React.createElement;

let gw;
before(async () => {
  gw = await startGateway({ ROOMCAST_PRESENCE_GRACE: "100ms" });
});
after(async () => {
  await gw.stop();
});

/** Renders `element` into a fresh container; returns it and an unmount function. */
async function render(element) {
  const container = document.createElement("div");
  document.body.append(container);
  const root = createRoot(container);
  root.render(element);
  return {
    container,
    unmount: () => root.unmount(),
  };
}

/** Waits for the DOM to show what `check` looks for. */
const until = (check, what) => eventually(check, what);

function Messages() {
  const room = useRoom({ channel: "c1" });
  const [messages, setMessages] = React.useState([]);
  useEvent(room, "message", (data) => setMessages((m) => [...m, data.text]));
  return h("ul", { className: "messages" }, ...messages.map((text, i) => h("li", { key: i }, text)));
}

function Who() {
  const room = useRoom({ channel: "c1" });
  const users = usePresence(room);
  const { typing, start } = useTyping(room);
  const state = useConnectionState();
  return h(
    "div",
    null,
    h("span", { className: "state" }, state),
    h("span", { className: "users" }, users.map((u) => `${u.userId}:${u.connections}`).join(",")),
    h("span", { className: "typing" }, typing.join(",")),
    h("button", { onClick: start }, "type"),
  );
}

test("StrictMode and two components on one room: one join, one leave", async () => {
  const client = connect(gw.url, { getToken: () => userToken("t1", "strict") });
  const sent = [];
  client.socket.onAnyOutgoing((event) => (event === "join" || event === "leave") && sent.push(event));
  try {
    // Connected first: StrictMode's mount, unmount and mount then all happen on a live socket.
    await eventually(() => client.state === "connected", "connected");
    const app = await render(h(React.StrictMode, null, h(RoomcastProvider, { client }, h(Messages), h(Who))));
    await until(() => app.container.querySelector(".state")?.textContent === "connected", "connected");
    await until(() => app.container.querySelector(".users")?.textContent === "strict:1", "its own presence");
    assert.deepEqual(sent, ["join"]);

    const res = await fetch(`${gw.apiUrl}/v1/publish`, {
      method: "POST",
      headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
      body: JSON.stringify({ tenant: "t1", channel: "c1", event: "message", data: { text: "hello" } }),
    });
    assert.equal(res.status, 200);
    await until(() => app.container.querySelector(".messages")?.textContent === "hello", "the event rendered");

    app.unmount();
    await eventually(() => sent.length === 2, "the leave");
    assert.deepEqual(sent, ["join", "leave"]);
  } finally {
    client.close();
  }
});

test("two users see each other's presence and typing", async () => {
  const ada = connect(gw.url, { getToken: () => userToken("t1", "ada") });
  const bob = connect(gw.url, { getToken: () => userToken("t1", "bob") });
  try {
    const a = await render(h(RoomcastProvider, { client: ada }, h(Who)));
    const b = await render(h(RoomcastProvider, { client: bob }, h(Who)));
    const users = (app) => (app.container.querySelector(".users")?.textContent ?? "").split(",").sort().join(",");
    await until(() => users(a) === "ada:1,bob:1" && users(b) === "ada:1,bob:1", "both in each other's list");

    b.container.querySelector("button").dispatchEvent(new window.MouseEvent("click", { bubbles: true }));
    await until(() => a.container.querySelector(".typing")?.textContent === "bob", "bob typing, seen by ada");
    assert.equal(b.container.querySelector(".typing")?.textContent, "", "one's own typing is not shown");

    b.unmount();
    await until(() => users(a) === "ada:1", "bob gone from ada's list");
    a.unmount();
  } finally {
    ada.close();
    bob.close();
  }
});

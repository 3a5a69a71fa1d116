// The example app: a channel with its messages, who is here, who is typing, and the connection's
// state, built on @roomcast/client/react. `example/server.mjs` serves it with a token endpoint;
// the browser tests (test/browser.test.mjs) drive two of it as two users.
import { StrictMode, useEffect, useState } from "react";
import { createRoot } from "react-dom/client";

import { connect } from "../src/index.js";
import { RoomcastProvider, useConnectionState, useEvent, usePresence, useRoom, useTyping } from "../src/react.js";

type ChatEvents = { message: { text: string } };

const params = new URLSearchParams(location.search);
const user = params.get("user") ?? "guest";
const channel = params.get("channel") ?? "general";
// The gateway's public URL, and where this app's backend hands out tokens.
const gateway = params.get("gateway") ?? location.origin;

const client = connect(gateway, {
  getToken: async () => {
    const res = await fetch(`/token?user=${encodeURIComponent(user)}`);
    if (!res.ok) throw new Error(`token endpoint: HTTP ${res.status}`);
    return res.text();
  },
  onError: (e) => console.warn("roomcast:", e.code, e.message),
});

function Chat() {
  const room = useRoom<ChatEvents>({ channel });
  const [messages, setMessages] = useState<{ text: string; from?: string; offset?: number }[]>([]);
  useEvent(room, "message", (data, meta) => setMessages((m) => [...m, { text: data.text, from: meta.from, offset: meta.offset }]));
  // Away longer than history keeps: the latest messages again, from history.
  useEffect(() => {
    if (!room) return;
    return room.onResync(() => {
      room
        .history({ limit: 50 })
        .then((page) =>
          setMessages(
            page.events
              .filter((e) => e.event === "message")
              .map((e) => ({ text: (e.data as { text: string }).text, from: e.from, offset: e.offset })),
          ),
        )
        .catch((e: { code?: string }) => console.warn("history unavailable:", e.code));
    });
  }, [room]);
  const users = usePresence(room);
  const { typing, start, stop } = useTyping(room);
  const state = useConnectionState();
  const [draft, setDraft] = useState("");

  const send = async () => {
    const text = draft.trim();
    if (!text || !room) return;
    setDraft("");
    stop();
    await room.publish("message", { text }).catch((e: { code?: string }) => console.warn("publish refused:", e.code));
  };

  return (
    <main>
      <header>
        <h1>#{channel}</h1>
        <span data-testid="state" className={`state ${state}`}>
          {state}
        </span>
        <span className="me">signed in as {user}</span>
      </header>
      <aside>
        <h2>Here now</h2>
        <ul data-testid="presence">
          {users.map((u) => (
            <li key={u.userId} data-user={u.userId}>
              {u.userId}
              {u.connections > 1 ? ` (${u.connections} tabs)` : ""} <small>{u.status}</small>
            </li>
          ))}
        </ul>
      </aside>
      <section>
        <ol data-testid="messages">
          {messages.map((m, i) => (
            <li key={i}>
              <b>{m.from ?? "server"}</b> {m.text}
            </li>
          ))}
        </ol>
        <p data-testid="typing" className="typing">
          {typing.length > 0 ? `${typing.join(", ")} ${typing.length > 1 ? "are" : "is"} typing…` : ""}
        </p>
        <form
          onSubmit={(e) => {
            e.preventDefault();
            void send();
          }}
        >
          <input
            data-testid="draft"
            value={draft}
            placeholder="Message"
            onChange={(e) => {
              setDraft(e.target.value);
              start();
            }}
          />
          <button type="submit">Send</button>
        </form>
      </section>
    </main>
  );
}

createRoot(document.getElementById("root") as HTMLElement).render(
  <StrictMode>
    <RoomcastProvider client={client}>
      <Chat />
    </RoomcastProvider>
  </StrictMode>,
);

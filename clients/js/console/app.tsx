// The Roomcast console, served by the gateway at /console on its admin listener (the bundle
// is embedded in the binary: `npm run build:console` writes gateway/console/console.js).
// Signs in with a console token (ROOMCAST_CONSOLE_TOKENS), watches one tenant's rooms through
// an observer connection made with @roomcast/client, and acts through the control API.
import { StrictMode, useCallback, useEffect, useRef, useState } from "react";
import { createRoot } from "react-dom/client";

import { connect, type EventMeta, type Occupancy, type RoomSpec } from "../src/index.js";
import {
  RoomcastProvider,
  useConnectionState,
  usePresence,
  useRoom,
  useTyping,
} from "../src/react.js";
import type { RoomcastClient } from "../src/index.js";

const TOKEN_KEY = "roomcast-console-token";

/** `1 user`, `2 users`. */
const count = (n: number, what: string) => `${n} ${what}${n === 1 ? "" : "s"}`;
/** The live tail keeps this many events; older ones drop off. */
const TAIL = 200;
/** Rooms listed per poll. */
const ROOMS_PAGE = 50;

/** A console API call; throws the gateway's coded error. */
async function api<T>(token: string, method: "GET" | "POST", path: string, body?: unknown): Promise<T> {
  const res = await fetch(`/console/api/${path}`, {
    // A request that never answers (a half-open connection) must not hold a poll forever.
    signal: AbortSignal.timeout(10_000),
    method,
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { "content-type": "application/json" }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await res.json().catch(() => ({ ok: false, error: { code: `http_${res.status}`, message: "" } }));
  if (!res.ok || !answer.ok) {
    const error = answer.error ?? {};
    throw new ConsoleError(error.code ?? `http_${res.status}`, error.message ?? "");
  }
  return answer as T;
}

class ConsoleError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message ? `${code}: ${message}` : code);
  }
}

/** Calls `poll` now and every `everyMs` while mounted (and `key` is unchanged). */
function usePoll<T>(poll: () => Promise<T>, everyMs: number, key: unknown): { value?: T; error?: string } {
  const [state, setState] = useState<{ value?: T; error?: string }>({});
  const pollRef = useRef(poll);
  pollRef.current = poll;
  useEffect(() => {
    let live = true;
    let pending = false;
    setState({});
    const run = () => {
      // A slow answer is not overtaken by the next tick's (nor answers reordered).
      if (pending) return;
      pending = true;
      pollRef.current()
        .then(
          (value) => live && setState({ value }),
          (e: Error) => live && setState((s) => ({ ...s, error: e.message })),
        )
        .finally(() => (pending = false));
    };
    void run();
    const timer = setInterval(run, everyMs);
    return () => {
      live = false;
      clearInterval(timer);
    };
  }, [everyMs, key]);
  return state;
}

interface Session {
  tenants: string[] | null;
  replica: string;
}

function App() {
  const [token, setToken] = useState<string | null>(() => {
    // A `--dev` run links here with `#token=…`: kept for the tab, then out of the address bar.
    const fromLink = new URLSearchParams(location.hash.slice(1)).get("token");
    if (fromLink) {
      sessionStorage.setItem(TOKEN_KEY, fromLink);
      history.replaceState(null, "", location.pathname);
    }
    return sessionStorage.getItem(TOKEN_KEY);
  });
  const [session, setSession] = useState<Session | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    if (!token) return;
    // A late answer for a token since replaced is ignored.
    let live = true;
    api<Session>(token, "GET", "session").then(
      (session) => live && setSession(session),
      (e: Error) => {
        if (!live) return;
        setError(e.message);
        // Only a refused token is forgotten: a replica restarting or a network blip is not.
        if (e instanceof ConsoleError && e.code === "unauthorized") {
          sessionStorage.removeItem(TOKEN_KEY);
          setToken(null);
        }
      },
    );
    return () => {
      live = false;
    };
  }, [token]);
  const signOut = () => {
    sessionStorage.removeItem(TOKEN_KEY);
    setSession(null);
    setToken(null);
  };
  if (!token || !session) {
    return (
      <SignIn
        error={error}
        busy={!!token && !error}
        onToken={(t) => {
          setError(null);
          sessionStorage.setItem(TOKEN_KEY, t);
          // The same token again (after a failure that was not a refusal) asks again.
          setToken(null);
          setTimeout(() => setToken(t));
        }}
      />
    );
  }
  return <Console token={token} session={session} onSignOut={signOut} />;
}

function SignIn({ error, busy, onToken }: { error: string | null; busy: boolean; onToken: (t: string) => void }) {
  const [value, setValue] = useState("");
  return (
    <main className="signin">
      <h1>Roomcast console</h1>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          if (value.trim()) onToken(value.trim());
        }}
      >
        <label>
          Console token <input type="password" value={value} onChange={(e) => setValue(e.target.value)} autoFocus />
        </label>
        <button type="submit" disabled={busy}>
          Sign in
        </button>
      </form>
      {error && <p className="error">{error}</p>}
      <p className="hint">A token of ROOMCAST_CONSOLE_TOKENS. It stays in this tab only.</p>
    </main>
  );
}

function Console({ token, session, onSignOut }: { token: string; session: Session; onSignOut: () => void }) {
  const [tenant, setTenant] = useState<string>(session.tenants?.[0] ?? "");
  const [draft, setDraft] = useState(tenant);
  return (
    <main className="console">
      <header>
        <h1>Roomcast console</h1>
        <form
          className="tenant"
          onSubmit={(e) => {
            e.preventDefault();
            setTenant(draft.trim());
          }}
        >
          <label>
            Tenant{" "}
            {session.tenants ? (
              <select value={tenant} onChange={(e) => setTenant(e.target.value)}>
                {session.tenants.map((t) => (
                  <option key={t}>{t}</option>
                ))}
              </select>
            ) : (
              <input value={draft} onChange={(e) => setDraft(e.target.value)} placeholder="tenant id" />
            )}
          </label>
          {!session.tenants && <button type="submit">Watch</button>}
        </form>
        <span className="scope">{session.tenants ? `scoped to ${session.tenants.join(", ")}` : "every tenant"}</span>
        <button className="signout" onClick={onSignOut}>
          Sign out
        </button>
      </header>
      <Replicas token={token} />
      {tenant ? <TenantView key={tenant} token={token} tenant={tenant} /> : <p className="hint">Pick a tenant.</p>}
    </main>
  );
}

interface ReplicaStatus {
  id: string;
  connections: number;
  observers: number;
  rooms: number;
  redis: string;
  lag_ms: number;
  dropped: number;
  delivered: number;
  draining: boolean;
  version: string;
}

function Replicas({ token }: { token: string }) {
  const { value, error } = usePoll(() => api<{ replicas: ReplicaStatus[]; replica: string }>(token, "GET", "replicas"), 2000, token);
  return (
    <section className="replicas">
      <h2>Replicas {error && <span className="error">{error}</span>}</h2>
      <table>
        <thead>
          <tr>
            <th>replica</th>
            <th>connections</th>
            <th>observers</th>
            <th>rooms</th>
            <th>Redis</th>
            <th>lag</th>
            <th>dropped</th>
            <th>delivered</th>
          </tr>
        </thead>
        <tbody>
          {(value?.replicas ?? []).map((r) => (
            <tr key={r.id} data-replica={r.id}>
              <td>
                {r.id.slice(0, 8)}
                {r.id === value?.replica && " (this one)"}
                {r.draining && " draining"}
              </td>
              <td>{r.connections}</td>
              <td>{r.observers}</td>
              <td>{r.rooms}</td>
              <td className={r.redis === "ok" || r.redis === "single_node" ? "" : "error"}>{r.redis}</td>
              <td>{r.lag_ms.toFixed(1)} ms</td>
              <td className={r.dropped > 0 ? "error" : ""}>{r.dropped}</td>
              <td>{r.delivered}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

function TenantView({ token, tenant }: { token: string; tenant: string }) {
  const [client, setClient] = useState<RoomcastClient | null>(null);
  const [error, setError] = useState<string | null>(null);
  const clearError = useCallback(() => setError(null), []);
  useEffect(() => {
    // The observer connection: to this listener's own Socket.IO engine, with tokens minted for
    // the tenant (asked again at every reconnect and before each expires).
    const c = connect(location.origin, {
      getToken: async () => (await api<{ token: string }>(token, "POST", "observer", { tenant })).token,
      onError: (e) => setError(`${e.code}: ${e.message}`),
    });
    setClient(c);
    return () => c.close();
  }, [token, tenant]);
  if (!client) return null;
  return (
    <RoomcastProvider client={client}>
      <Tenant token={token} tenant={tenant} error={error} clearError={clearError} />
    </RoomcastProvider>
  );
}

interface ListedRoom {
  room: string;
  kind: "project" | "channel";
  id: string;
  connections: number;
  users: number;
}

function Tenant({
  token,
  tenant,
  error,
  clearError,
}: {
  token: string;
  tenant: string;
  error: string | null;
  clearError: () => void;
}) {
  const state = useConnectionState();
  // An error is shown until the connection is (again) established after it.
  useEffect(() => {
    if (state === "connected") clearError();
  }, [state, clearError]);
  const [watched, setWatched] = useState<RoomSpec | null>(null);
  const [kind, setKind] = useState<"channel" | "project">("channel");
  const [id, setId] = useState("");
  // The first page only (each listed room costs the replica an occupancy read per poll): the
  // list says when there are more, and any room can be watched by its id.
  const rooms = usePoll(() => listRooms(token, tenant), 5000, tenant);
  const specKey = watched ? JSON.stringify(watched) : "";
  return (
    <div className="tenant-view">
      <aside>
        <h2>
          {tenant} <span className={`state ${state}`}>{state}</span>
        </h2>
        {error && <p className="error">{error}</p>}
        <form
          onSubmit={(e) => {
            e.preventDefault();
            if (id.trim()) setWatched(kind === "channel" ? { channel: id.trim() } : { project: id.trim() });
          }}
        >
          <select value={kind} onChange={(e) => setKind(e.target.value as "channel" | "project")}>
            <option value="channel">channel</option>
            <option value="project">project</option>
          </select>
          <input value={id} onChange={(e) => setId(e.target.value)} placeholder="id" aria-label="room id" />
          <button type="submit">Watch</button>
        </form>
        <h3>Rooms with members {rooms.error && <span className="error">{rooms.error}</span>}</h3>
        <ul className="rooms">
          {(rooms.value?.rooms ?? []).map((r) => (
            <li key={r.room}>
              <button
                className="link"
                onClick={() => setWatched(r.kind === "channel" ? { channel: r.id } : { project: r.id })}
              >
                {r.kind} {r.id}
              </button>{" "}
              <small>
                {count(r.users, "user")}, {count(r.connections, "connection")}
              </small>
            </li>
          ))}
          {rooms.value && rooms.value.rooms.length === 0 && !rooms.value.cursor && <li className="hint">none</li>}
          {rooms.value?.cursor && <li className="hint">and more: watch one by its id</li>}
        </ul>
      </aside>
      {watched ? <Watch key={specKey} token={token} tenant={tenant} spec={watched} /> : <p className="hint">Pick a room to watch.</p>}
    </div>
  );
}

/**
 * Up to ROOMS_PAGE rooms with members, following the cursor for at most 3 pages (a page may
 * come back sparse: the index keeps rooms a while after their last member left); `cursor` is
 * set when there are more.
 */
async function listRooms(token: string, tenant: string): Promise<{ rooms: ListedRoom[]; cursor: string | null }> {
  const rooms: ListedRoom[] = [];
  let cursor: string | null = null;
  for (let page = 0; page < 3 && rooms.length < ROOMS_PAGE; page++) {
    const query = `tenant=${encodeURIComponent(tenant)}&limit=${ROOMS_PAGE}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
    const answer: { rooms: ListedRoom[]; cursor: string | null } = await api(token, "GET", `rooms?${query}`);
    for (const room of answer.rooms) if (!rooms.some((r) => r.room === room.room)) rooms.push(room);
    cursor = answer.cursor;
    if (!cursor) break;
  }
  return { rooms: rooms.slice(0, ROOMS_PAGE), cursor };
}

interface TailEntry {
  n: number;
  event: string;
  data: unknown;
  meta: EventMeta;
  at: number;
}

function Watch({ token, tenant, spec }: { token: string; tenant: string; spec: RoomSpec }) {
  const room = useRoom(spec);
  const presence = usePresence(room);
  const { typing } = useTyping(room);
  const [tail, setTail] = useState<TailEntry[]>([]);
  const [paused, setPaused] = useState(false);
  const [held, setHeld] = useState<TailEntry[]>([]);
  const [joinError, setJoinError] = useState<string | null>(null);
  const [occupancy, setOccupancy] = useState<Occupancy | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const pausedRef = useRef(paused);
  pausedRef.current = paused;
  const seq = useRef(0);
  const kind = spec.channel !== undefined ? "channel" : "project";
  const id = spec.channel ?? spec.project ?? "";

  useEffect(() => {
    if (!room) return;
    room.ready.then(
      () => setJoinError(null),
      (e: Error & { code?: string }) => setJoinError(`${e.code ?? "error"}: ${e.message}`),
    );
    const offAny = room.onAny((event, data, meta) => {
      const entry = { n: ++seq.current, event, data, meta, at: Date.now() };
      // Bounded either way: paused, what arrives waits (the newest TAIL of it).
      const add = (list: TailEntry[]) => [entry, ...list].slice(0, TAIL);
      if (pausedRef.current) setHeld(add);
      else setTail(add);
    });
    const offResync = room.onResync((r) => setNotice(`resync (${r.reason}): events were missed beyond history`));
    return () => {
      offAny();
      offResync();
    };
  }, [room]);

  useEffect(() => {
    if (!room) return;
    let live = true;
    const read = () =>
      room.occupancy().then(
        (o) => live && setOccupancy(o),
        () => {},
      );
    void room.ready.then(read, () => {});
    const timer = setInterval(read, 5000);
    return () => {
      live = false;
      clearInterval(timer);
    };
    // Read again whenever presence changes (the client paces these reads).
  }, [room, presence]);

  const resume = () => {
    setTail((t) => [...held, ...t].slice(0, TAIL));
    setHeld([]);
    setPaused(false);
  };

  const act = useCallback(
    async (what: "disconnect" | "leave", user: string) => {
      const body =
        what === "disconnect"
          ? { tenant, user, reason: "console", reconnect: false }
          : { tenant, user, room: { [kind]: id } };
      try {
        const answer = await api<{ sockets: number }>(token, "POST", what, body);
        setNotice(`${what === "disconnect" ? "disconnected" : "removed"} ${user}: ${count(answer.sockets, "socket")}`);
      } catch (e) {
        setNotice((e as Error).message);
      }
    },
    [token, tenant, kind, id],
  );

  const typists = typing.join(", ");
  return (
    <section className="watch">
      <h2>
        {kind} {id} <code>{room?.name ?? ""}</code>
      </h2>
      {joinError && <p className="error">{joinError}</p>}
      {notice && (
        <p className="notice" onClick={() => setNotice(null)}>
          {notice}
        </p>
      )}
      <div className="panels">
        <div className="presence">
          <h3>
            Presence{" "}
            {occupancy && (
              <small className="occupancy">
                {count(occupancy.users, "user")}, {count(occupancy.connections, "connection")}
              </small>
            )}
          </h3>
          <ul>
            {presence.map((u) => (
              <li key={u.userId} data-user={u.userId}>
                <b>{u.userId}</b> <small>{u.status}</small>
                {u.connections > 1 && <small> ×{u.connections}</small>}{" "}
                <button onClick={() => void act("leave", u.userId)}>Remove from room</button>{" "}
                <button onClick={() => void act("disconnect", u.userId)}>Disconnect</button>
              </li>
            ))}
            {presence.length === 0 && <li className="hint">nobody</li>}
          </ul>
          <p className="typing">{typists ? `typing: ${typists}` : " "}</p>
        </div>
        <div className="tail">
          <h3>
            Live events{" "}
            {paused ? (
              <button onClick={resume}>Resume ({held.length} held)</button>
            ) : (
              <button onClick={() => setPaused(true)}>Pause</button>
            )}{" "}
            <button onClick={() => setTail([])}>Clear</button>
          </h3>
          <ol>
            {tail.map((e) => (
              <li key={e.n} className="event">
                <time>{new Date(e.at).toLocaleTimeString()}</time> <b>{e.event}</b>
                {e.meta.offset !== undefined && <small> #{e.meta.offset}</small>}
                {e.meta.from && <small> from {e.meta.from}</small>}
                <pre>{JSON.stringify(e.data)}</pre>
              </li>
            ))}
            {tail.length === 0 && <li className="hint">waiting for events…</li>}
          </ol>
        </div>
      </div>
    </section>
  );
}

const root = document.getElementById("root");
if (root) {
  createRoot(root).render(
    <StrictMode>
      <App />
    </StrictMode>,
  );
}

import { io, type ManagerOptions, type Socket, type SocketOptions } from "socket.io-client";

import { RoomcastError, fromAckError, type ErrorCode } from "./errors.js";
import { Listeners } from "./listeners.js";
import { Room, RoomState, keyOfName, specKey } from "./room.js";
import type { ConnectionState, EventMap, RoomSpec, Status } from "./types.js";

export interface ConnectOptions {
  /**
   * Returns a token for this user (from your backend). Called at every connect and reconnect,
   * when the gateway says the token is about to expire (`auth:expiring`), and when it was
   * refused as expired or revoked. If it throws, it is called again, backing off.
   */
  getToken: () => string | Promise<string>;
  /** How long an operation waits for the gateway's answer (default 10 s): then `ack_timeout`. */
  ackTimeoutMs?: number;
  /** Errors that no call returns: refused token refreshes, failed rejoins, refused connects. */
  onError?: (error: RoomcastError) => void;
  /**
   * Typing indicators: `typing: true` is sent at most every `throttleMs` (default 2 s, the
   * gateway's own throttle) while `start()` keeps being called, and `typing: false` once
   * `idleMs` (default 3 s) pass without a call.
   */
  typing?: { throttleMs?: number; idleMs?: number };
  /**
   * Connects the gateway refused (socket.io-client retries transport failures itself): tried
   * again after `firstDelayMs` (250 ms), doubling up to `maxDelayMs` (30 s), with jitter; after
   * `maxTokenRefusals` (10, about a minute) token refusals in a row the client gives up.
   */
  retry?: { firstDelayMs?: number; maxDelayMs?: number; maxTokenRefusals?: number };
  /** Passed to `socket.io-client` as they are (`transports`, `path`, reconnection delays…). */
  io?: Partial<ManagerOptions & SocketOptions>;
}

/** Codes a connect may be refused with that a fresh token can fix. */
const TOKEN_CODES = new Set<string>(["token_expired", "token_revoked", "token_invalid", "token_missing"]);
/** Codes worth trying again later as they are (the connect proxy's failures are passing ones). */
const RETRY_CODES = new Set<string>(["rate_limited", "too_many_connections", "server_shutdown", "unavailable", "rpc_unavailable", "rpc_timeout"]);
/**
 * Token refusals in a row before the client gives up (`connect_failed`): with the backoff,
 * about a minute of refusals, so that a gateway restarting while its identity provider is slow
 * (every token refused until its keys load) does not close its clients.
 */
const MAX_TOKEN_REFUSALS = 10;
const BACKOFF_FIRST_MS = 250;
/** A connection up this long resets the backoff. */
const STABLE_MS = 10_000;
/** A `getToken` call not settled by then counts as failed (and is asked again, backing off). */
const TOKEN_DEADLINE_MS = 15_000;
const BACKOFF_MAX_MS = 30_000;

/**
 * A connection to a Roomcast gateway: one `socket.io-client` socket, the rooms joined through
 * it (rejoined on every reconnect, with `since`, so nothing is lost within history), and the
 * token kept fresh.
 */
export class RoomcastClient {
  /** The underlying socket, for events this library does not wrap. */
  readonly socket: Socket;
  private readonly options: ConnectOptions;
  /** Rooms by `specKey`: `project:p1`, `channel:c1` (the tail of their full names). */
  private readonly rooms = new Map<string, RoomState>();
  private readonly stateListeners = new Listeners<[ConnectionState]>((run) => {
    try {
      run();
    } catch (cause) {
      this.reportError(new RoomcastError("listener_failed", "a state listener threw", { cause }));
    }
  });
  private stateValue: ConnectionState = "connecting";
  private everConnected = false;
  private tokenRefusals = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private retries = 0;
  /** When the last connect happened (the backoff's reset needs a connection that lasted). */
  private connectedAt: number | undefined;
  private closedByUser = false;
  private statusValue: Status = "online";
  /** What the last `roomcast:disconnect` said: `onDisconnect` decides with it. */
  private notice: { code: string; reconnect: boolean } | undefined;
  /** Why the client ended `closed` by itself (what a join made meanwhile is told). */
  private closeReason: RoomcastError | undefined;
  /** Pending `sleep`s, ended by `close()`. */
  private readonly sleeps = new Set<() => void>();
  /** The token being fetched: every `auth` call made meanwhile waits for this one. */
  private pendingToken: Promise<string | undefined> | undefined;
  /** Counts `auth` calls: only the latest one's callback may send a CONNECT. */
  private authSeq = 0;

  constructor(url: string, options: ConnectOptions) {
    this.options = options;
    this.socket = io(url, {
      transports: ["websocket"],
      ...options.io,
      // A function: socket.io-client calls it at every (re)connect, so each gets a fresh token.
      auth: (cb: (data: object) => void) => {
        // socket.io-client asks again for every new engine, also while an earlier fetch is
        // still failing: one fetch serves them, and only the latest ask sends a CONNECT.
        const seq = ++this.authSeq;
        this.pendingToken ??= this.token().finally(() => (this.pendingToken = undefined));
        void this.pendingToken.then((token) => {
          if (token !== undefined && seq === this.authSeq && !this.closedByUser) cb({ token });
        });
      },
    });
    this.socket.on("connect", () => this.onConnect());
    this.socket.on("disconnect", (reason) => this.onDisconnect(reason));
    this.socket.on("connect_error", (err: Error) => this.onConnectError(err));
    this.socket.on("auth:expiring", () => void this.refreshToken());
    this.socket.on("roomcast:disconnect", (notice: { code?: unknown; reconnect?: unknown }) => {
      const code = typeof notice?.code === "string" ? notice.code : "disconnected";
      this.notice = { code, reconnect: notice?.reconnect === true };
      // A drain is routine: the client moves to another replica by itself.
      if (code !== "server_shutdown") this.reportError(new RoomcastError(code as ErrorCode, `disconnected by the gateway: ${code}`));
    });
    this.socket.on("roomcast:resync", (resync: { room?: unknown; reason?: unknown; epoch?: unknown; offset?: unknown }) => {
      if (typeof resync?.room !== "string") return;
      this.roomNamed(resync.room)?.resync({
        room: resync.room,
        reason: typeof resync.reason === "string" ? resync.reason : "gap",
        epoch: typeof resync.epoch === "string" ? resync.epoch : undefined,
        offset: typeof resync.offset === "number" ? resync.offset : undefined,
      });
    });
    // A backend took this connection out of a room (README "Moving users between rooms"). It is
    // not rejoined on reconnect: a new connection may join it again if the token grants it, and
    // rejoining would undo the backend's decision at every network blip.
    this.socket.on("roomcast:left", (notice: { room?: unknown }) => {
      if (typeof notice?.room === "string") this.roomNamed(notice.room)?.removed();
    });
    // A backend put this connection in a room: one the application joined (and a backend had
    // removed) is live again from the position given.
    this.socket.on("roomcast:joined", (notice: { room?: unknown; offset?: unknown; epoch?: unknown }) => {
      if (typeof notice?.room !== "string") return;
      this.roomNamed(notice.room)?.restored(
        notice.room,
        typeof notice.offset === "number" && typeof notice.epoch === "string" ? { offset: notice.offset, epoch: notice.epoch } : undefined,
      );
    });
    this.socket.onAny((event: string, ...args: unknown[]) => this.route(event, args));
    // socket.io-client gave up (its `reconnectionAttempts` ran out): closed, until reconnect().
    this.socket.io.on("reconnect_failed", () => {
      const error = new RoomcastError("connection_lost", "socket.io-client stopped reconnecting");
      this.reportError(error);
      this.closedByItself(error);
    });
    // A session that closed before its CONNECT: the next one fetches its own token, whatever
    // became of this one's fetch.
    this.socket.io.on("close", () => (this.pendingToken = undefined));
  }

  /** The connection's state; `onStateChange` tells every change. */
  get state(): ConnectionState {
    return this.stateValue;
  }

  /** Calls `listener` at every state change; returns the function that stops it. */
  onStateChange(listener: (state: ConnectionState) => void): () => void {
    return this.stateListeners.add(listener);
  }

  /**
   * Joins a room, or takes one more reference to a room already joined: each `Room` returned is
   * left with its own `leave()`, and the room is left once every one was. Events come in order,
   * each once, also across reconnects (see `Room.onResync` for what history no longer held).
   */
  join<E extends EventMap = EventMap>(spec: RoomSpec): Room<E> {
    const key = specKey(spec);
    let state = this.rooms.get(key);
    // A room refused or removed is over for its handles; a new join starts afresh.
    if (state && !state.isLive) state = undefined;
    if (!state) {
      state = new RoomState(this, spec);
      if (this.closedByUser) {
        state.refuse(new RoomcastError("closed", "the client was closed"));
      } else {
        this.rooms.set(key, state);
        if (this.socket.connected) void state.join();
        // Joined on `reconnect()`; until then `ready` says why nothing happens.
        else if (this.stateValue === "closed" && this.closeReason) state.failPending(this.closeReason);
      }
    }
    return state.acquire() as Room<E>;
  }

  /**
   * Sets this user's status in every project and channel room this connection is in; kept and
   * applied again after every reconnect.
   */
  async setStatus(status: Status): Promise<void> {
    this.statusValue = status;
    if (this.socket.connected) await this.request("presence:update", { status });
  }

  /** Calls a backend RPC (README "Client RPC"): resolves with its `result`. */
  async rpc<T = unknown>(event: string, data?: unknown): Promise<T> {
    const ack = await this.request(event, data);
    return ack.result as T;
  }

  /**
   * Connects again after the client ended `closed` by itself (refused for good, or disconnected
   * by a backend with `reconnect: false`). Rooms still held are rejoined.
   */
  reconnect(): void {
    if (this.closedByUser || this.stateValue !== "closed") return;
    this.tokenRefusals = 0;
    this.retries = 0;
    this.connectedAt = undefined;
    this.setState(this.everConnected ? "reconnecting" : "connecting");
    // From any state socket.io-client may be in after giving up: a fresh start.
    this.socket.disconnect();
    this.socket.connect();
  }

  /** Closes the connection for good: rooms are not rejoined, pending calls fail with `closed`. */
  close(): void {
    if (this.closedByUser) return;
    this.closedByUser = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    for (const done of this.sleeps) done();
    this.sleeps.clear();
    for (const room of this.rooms.values()) room.dispose();
    this.rooms.clear();
    // Held packets' acks would only fail at their timeout: dropped, they fail now, as closed.
    this.socket.sendBuffer.length = 0;
    this.socket.disconnect();
    this.setState("closed");
  }

  /**
   * Sends `event` and waits for its ack; a refused ack (`ok: false`) rejects with its code. Not
   * connected: rejects at once with `connection_lost` (socket.io-client would hold it and send it
   * on reconnect, before the rooms are rejoined). Used by rooms; public for events this library
   * does not wrap.
   */
  async request(event: string, data?: unknown): Promise<Record<string, unknown>> {
    if (this.closedByUser) throw new RoomcastError("closed", "the client was closed");
    if (!this.socket.connected) throw new RoomcastError("connection_lost", `not connected: ${event} was not sent`);
    let ack: unknown;
    try {
      ack = await this.socket.timeout(this.options.ackTimeoutMs ?? 10_000).emitWithAck(event, data);
    } catch (cause) {
      if (this.closedByUser) throw new RoomcastError("closed", "the client was closed", { cause });
      // socket.io-client's two rejections: its timer, or the connection closing first.
      const timedOut = cause instanceof Error && cause.message.includes("timed out");
      throw timedOut
        ? new RoomcastError("ack_timeout", `no answer to ${event}`, { cause })
        : new RoomcastError("connection_lost", `the connection dropped before ${event} was answered`, { cause });
    }
    const answer = (typeof ack === "object" && ack !== null ? ack : {}) as Record<string, unknown>;
    if (answer.ok !== true) throw fromAckError(answer.error);
    return answer;
  }

  /**
   * @internal A call that counts against the socket's read budget (`history`,
   * `room:occupancy`): paced with the presence reads; a refusal holds them all back.
   */
  async pacedRead(event: string, data: unknown): Promise<Record<string, unknown>> {
    await this.readPace.take();
    try {
      return await this.request(event, data);
    } catch (e) {
      if (e instanceof RoomcastError && e.code === "rate_limited") this.readPace.hold(e.retryAfterMs ?? 1_000);
      throw e;
    }
  }

  /** @internal Whether `state` was the room's current state (and is no more). */
  forget(state: RoomState): boolean {
    if (this.rooms.get(state.key) !== state) return false;
    this.rooms.delete(state.key);
    return true;
  }

  /** @internal `close()` was called. */
  get isClosed(): boolean {
    return this.closedByUser;
  }

  /** @internal Resolves after `ms`, or at once when the client is closed (no timer left behind). */
  sleep(ms: number): Promise<void> {
    if (this.closedByUser) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.sleeps.delete(done);
        resolve();
      }, ms);
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      this.sleeps.add(done);
    });
  }

  /**
   * @internal Paces what shares the socket's `presence:list` budget (5/s:10, with `history` and
   * `room:occupancy`): every room's presence reads and history and occupancy calls.
   */
  readonly readPace = new Pace(this, 4, 8);

  /** @internal */
  get typingOptions(): { throttleMs?: number; idleMs?: number } {
    return this.options.typing ?? {};
  }

  /** @internal */
  reportError(error: RoomcastError): void {
    try {
      this.options.onError?.(error);
    } catch {
      // The application's error handler failing is not something to report to it.
    }
  }

  /** The room a full name (`tenant:t:project:p`) belongs to: known before its join is answered. */
  private roomNamed(name: string): RoomState | undefined {
    const key = keyOfName(name);
    return key === undefined ? undefined : this.rooms.get(key);
  }

  /** A token from `getToken`, asked again with backoff while it fails; `undefined` once closed. */
  private async token(): Promise<string | undefined> {
    // Asked until it answers, unless nothing is connecting any more (closed, and socket.io-client
    // idle): a token-service outage then costs no calls until the next connect.
    for (let attempt = 0; !this.closedByUser && (this.stateValue !== "closed" || this.socket.active); attempt++) {
      try {
        return await withDeadline(Promise.resolve().then(() => this.options.getToken()), TOKEN_DEADLINE_MS);
      } catch (cause) {
        this.reportError(new RoomcastError("get_token_failed", "getToken failed", { cause }));
        await this.sleep(this.backoff(attempt));
      }
    }
    return undefined;
  }

  private onConnect(): void {
    this.everConnected = true;
    this.tokenRefusals = 0;
    this.connectedAt = performance.now();
    this.notice = undefined;
    this.setState("connected");
    if (this.statusValue !== "online") {
      this.request("presence:update", { status: this.statusValue }).catch((e: RoomcastError) => this.reportUnlessGone(e));
    }
    for (const room of this.rooms.values()) void room.join();
  }

  private onDisconnect(reason: Socket.DisconnectReason): void {
    // The backoff starts over only after a connection that lasted: a gateway that accepts and at
    // once disconnects (reconnect: true) is not asked again every 250 ms.
    if (this.connectedAt !== undefined && performance.now() - this.connectedAt >= STABLE_MS) this.retries = 0;
    this.connectedAt = undefined;
    if (this.closedByUser) return;
    // Packets socket.io-client holds for the next connection (sent while its heartbeat had
    // already expired): not sent then, before the rejoins. Their acks then fail with
    // connection_lost, as documented.
    this.socket.sendBuffer.length = 0;
    for (const room of this.rooms.values()) room.disconnected();
    const notice = this.notice;
    this.notice = undefined;
    if (reason === "io server disconnect") {
      // The gateway ended the session; socket.io-client does not reconnect from this by itself.
      // A token problem is ours to fix with a fresh token; `reconnect: true` says we may.
      if (notice && (TOKEN_CODES.has(notice.code) || notice.reconnect)) this.scheduleReconnect();
      else this.closedByItself(new RoomcastError((notice?.code ?? "disconnected") as ErrorCode, "disconnected by the gateway"));
      return;
    }
    // Every other reason (a drain's transport close included): socket.io-client reconnects
    // by itself, unless its reconnection is off or the application disconnected the socket.
    if (this.socket.active && this.socket.io.reconnection()) this.setState(this.everConnected ? "reconnecting" : "connecting");
    else this.closedByItself(new RoomcastError("connection_lost", `disconnected: ${reason}`));
  }

  /** Ended without `close()`: `reconnect()` may start again. First joins still unanswered fail. */
  private closedByItself(error: RoomcastError): void {
    this.closeReason = error;
    for (const room of this.rooms.values()) room.failPending(error);
    this.setState("closed");
  }

  private onConnectError(err: Error): void {
    if (this.closedByUser) return;
    // Transport errors (gateway unreachable): socket.io-client's own reconnection retries,
    // unless it is turned off.
    if (this.socket.active) {
      if (!this.socket.io.reconnection()) {
        const error = new RoomcastError("connection_lost", `cannot reach the gateway: ${err.message}`, { cause: err });
        this.reportError(error);
        this.closedByItself(error);
      } else if (this.everConnected) this.setState("reconnecting");
      return;
    }
    // A refusal by the gateway: socket.io-client does not retry it by itself.
    const code = err.message;
    if (TOKEN_CODES.has(code)) {
      this.tokenRefusals += 1;
      if (this.tokenRefusals >= (this.options.retry?.maxTokenRefusals ?? MAX_TOKEN_REFUSALS)) {
        const error = new RoomcastError("connect_failed", `connect refused ${this.tokenRefusals} times in a row: ${code}`, { cause: err });
        this.reportError(error);
        this.closedByItself(error);
        return;
      }
    } else if (!RETRY_CODES.has(code)) {
      const error = new RoomcastError("connect_failed", `connect refused: ${code}`, { cause: err });
      this.reportError(error);
      this.closedByItself(error);
      return;
    }
    this.reportError(new RoomcastError(code as ErrorCode, `connect refused: ${code}`, { cause: err }));
    this.scheduleReconnect();
  }

  /** Connects again after a backoff (250 ms doubling to 30 s, with jitter). */
  private scheduleReconnect(): void {
    if (this.closedByUser || this.retryTimer !== undefined) return;
    if (this.everConnected) this.setState("reconnecting");
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      // Not while socket.io-client is connecting by itself: a second CONNECT would go out.
      if (!this.closedByUser && !this.socket.active) this.socket.connect();
    }, this.backoff(this.retries++));
  }

  private backoff(attempt: number): number {
    const first = this.options.retry?.firstDelayMs ?? BACKOFF_FIRST_MS;
    const max = this.options.retry?.maxDelayMs ?? BACKOFF_MAX_MS;
    return Math.min(max, first * 2 ** Math.min(attempt, 16)) * (0.5 + Math.random() / 2);
  }

  /** Answers `auth:expiring`: a fresh token for the same user keeps the connection and its rooms. */
  private async refreshToken(): Promise<void> {
    const token = await this.token();
    if (token === undefined) return;
    let ack: Record<string, unknown>;
    try {
      ack = await this.request("auth:refresh", { token });
    } catch (e) {
      this.reportUnlessGone(e as RoomcastError);
      return;
    }
    // Rooms the new token no longer grants: the gateway took the socket out of them.
    for (const name of Array.isArray(ack.left) ? ack.left : []) {
      const room = typeof name === "string" ? this.roomNamed(name) : undefined;
      if (!room) continue;
      room.removed();
      this.reportError(new RoomcastError("forbidden", `the refreshed token no longer grants ${String(name)}`));
    }
  }

  /** Reports `e` unless it only says the connection or the client went away (handled elsewhere). */
  reportUnlessGone(e: RoomcastError): void {
    if (e.code !== "closed" && e.code !== "connection_lost") this.reportError(e);
  }

  private route(event: string, args: unknown[]): void {
    const [data, meta] = args;
    if (typeof meta === "object" && meta !== null && typeof (meta as { room?: unknown }).room === "string") {
      this.roomNamed((meta as { room: string }).room)?.deliver(event, data, meta as { room: string });
      return;
    }
    if (typeof data !== "object" || data === null) return;
    const payload = data as Record<string, unknown>;
    // Presence and typing name their room by project or channel id, not by full name.
    const key =
      typeof payload.channel === "string" ? specKey({ channel: payload.channel }) : typeof payload.project === "string" ? specKey({ project: payload.project }) : undefined;
    const room = key === undefined ? undefined : this.rooms.get(key);
    if (!room) return;
    if (event === "presence:join" || event === "presence:leave" || event === "presence:update") room.presence.onEvent(event, payload);
    else if (event === "typing") room.typing.onEvent(payload);
  }

  private setState(state: ConnectionState): void {
    if (this.stateValue === state) return;
    this.stateValue = state;
    this.stateListeners.emit(state);
  }
}

/** Connects to the gateway at `url` (e.g. `https://realtime.example.com`). */
export function connect(url: string, options: ConnectOptions): RoomcastClient {
  return new RoomcastClient(url, options);
}

/** A token bucket that waits: `take()` resolves once a token is there (`rate` per second). */
class Pace {
  private tokens: number;
  private last = performance.now();

  constructor(
    private readonly client: RoomcastClient,
    private readonly rate: number,
    private readonly burst: number,
  ) {
    this.tokens = burst;
  }

  /** The gateway refused a read: nothing more for `ms` (everyone waiting retries after it). */
  hold(ms: number): void {
    this.tokens = Math.min(this.tokens, -(ms / 1000) * this.rate);
    this.last = performance.now();
  }

  async take(): Promise<void> {
    // Once the client is closed, `sleep` no longer waits: nothing is sent anyway.
    while (!this.client.isClosed) {
      const now = performance.now();
      this.tokens = Math.min(this.burst, this.tokens + (Math.max(0, now - this.last) / 1000) * this.rate);
      this.last = now;
      if (this.tokens >= 1) {
        this.tokens -= 1;
        return;
      }
      await this.client.sleep(((1 - this.tokens) / this.rate) * 1000);
    }
  }
}

/** `promise`, or a rejection once `ms` passed without it settling. */
function withDeadline<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

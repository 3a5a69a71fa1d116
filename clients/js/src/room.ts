import type { RoomcastClient } from "./client.js";
import { RoomcastError } from "./errors.js";
import { Listeners } from "./listeners.js";
import type {
  EventMap,
  EventMeta,
  HistoryPage,
  JoinResult,
  Occupancy,
  Position,
  PresenceUser,
  PublishReceipt,
  Resync,
  RoomSpec,
  Status,
} from "./types.js";

type Listener = (data: unknown, meta: EventMeta) => void;

/** Join refusals no retry changes: the room is over for its handles (`ready` rejects). */
const FINAL_JOIN_CODES = new Set<string>(["forbidden", "invalid_room", "too_many_rooms", "invalid_payload"]);

/** One key per room, whatever the gateway calls it: rooms are found by this before they are joined. */
export function specKey(spec: RoomSpec): string {
  return spec.project !== undefined ? `project:${spec.project}` : `channel:${spec.channel}`;
}

/**
 * The key of a full room name, `tenant:{t}:project:{p}` or `tenant:{t}:channel:{c}` (ids hold no
 * `:`): events of a room can be routed before its join was answered (the gateway sends what
 * happened during a join before the ack).
 */
export function keyOfName(name: string): string | undefined {
  const parts = name.split(":");
  if (parts.length !== 4 || parts[0] !== "tenant" || (parts[2] !== "project" && parts[2] !== "channel")) return undefined;
  return `${parts[2]}:${parts[3]}`;
}

/**
 * A joined room's one state, shared by every `Room` handle taken on it: the position of the
 * last event delivered (what a rejoin sends as `since`), listeners, presence and typing.
 * @internal
 */
export class RoomState {
  readonly key: string;
  readonly spec: RoomSpec;
  name: string | undefined;
  position: Position | undefined;
  readonly presence: PresenceState;
  readonly typing: TypingState;
  private refs = 0;
  private readonly listeners = new Map<string, Listeners<[unknown, EventMeta]>>();
  private readonly anyListeners = new Listeners<[string, unknown, EventMeta]>((run) => this.call(run));
  private readonly resyncListeners = new Listeners<[Resync]>((run) => this.call(run));
  private readonly joinListeners = new Listeners<[JoinResult]>((run) => this.call(run));
  private settle: { resolve: (r: JoinResult) => void; reject: (e: RoomcastError) => void } | undefined;
  ready: Promise<JoinResult>;
  private disposed = false;
  private leaveTimer: ReturnType<typeof setTimeout> | undefined;
  /** A backend made the socket leave (`roomcast:left`), or a refreshed token stopped granting it. */
  private removedByBackend = false;
  /** The first join was refused. */
  private refused = false;
  /** Joins sent: an answer to an older one (a previous connection's) is ignored. */
  private generation = 0;
  /** Passing join failures in a row (the backoff's exponent). */
  private joinFailures = 0;
  private readonly removedListeners = new Listeners<[]>((run) => this.call(run));

  constructor(
    readonly client: RoomcastClient,
    spec: RoomSpec,
  ) {
    this.spec = spec.project !== undefined ? { project: spec.project } : { channel: spec.channel as string };
    this.key = specKey(this.spec);
    this.presence = new PresenceState(this);
    this.typing = new TypingState(this);
    this.ready = new Promise<JoinResult>((resolve, reject) => (this.settle = { resolve, reject }));
    // Nobody may be waiting on `ready`: its refusal is also reported through onError.
    this.ready.catch(() => {});
  }

  acquire(): Room {
    this.refs += 1;
    clearTimeout(this.leaveTimer);
    this.leaveTimer = undefined;
    return new Room(this);
  }

  /**
   * One handle fewer. The last one leaves the room on the next turn of the event loop, not at
   * once: a component that unmounts and mounts again at once (React's StrictMode, a re-keyed
   * list) takes the room back without a leave and a join.
   */
  release(): void {
    this.refs -= 1;
    if (this.refs > 0 || this.disposed || this.leaveTimer !== undefined) return;
    this.leaveTimer = setTimeout(() => {
      this.leaveTimer = undefined;
      if (this.refs > 0 || this.disposed) return;
      const inRoom = this.isLive;
      this.dispose();
      // Only the room's current state may leave it: a refused or removed one was replaced by a
      // newer join, which this leave would undo.
      if (this.client.forget(this) && inRoom && this.client.socket.connected) {
        this.client.request("leave", this.spec).catch((e: RoomcastError) => this.client.reportUnlessGone(e));
      }
    }, 0);
  }

  /** Sends the join, with `since` once an event was seen: what was missed comes before the ack. */
  async join(): Promise<void> {
    if (!this.isLive) return;
    const generation = ++this.generation;
    const since = this.position;
    let ack: Record<string, unknown>;
    try {
      ack = await this.client.request("join", since ? { ...this.spec, since } : this.spec);
    } catch (e) {
      const error = e as RoomcastError;
      // Gone, or superseded by the rejoin of a newer connection.
      if (!this.isLive || generation !== this.generation) return;
      // The next connection rejoins.
      if (error.code === "closed" || error.code === "connection_lost") return;
      if (!FINAL_JOIN_CODES.has(error.code)) {
        // Passing: over the join budget (many rooms rejoined at once), unanswered, Redis or a
        // subscribe proxy failing during a drain. Again on this connection, backing off.
        if (error.code !== "rate_limited") this.client.reportError(error);
        // With jitter: the rooms of clients a drain moved together do not retry in lockstep.
        const delay = error.retryAfterMs ?? Math.min(30_000, 500 * 2 ** Math.min(this.joinFailures++, 6)) * (0.5 + Math.random() / 2);
        await this.client.sleep(delay);
        if (this.isLive && generation === this.generation && this.client.socket.connected) return this.join();
        return;
      }
      this.client.reportError(error);
      // Refused: over for this state's handles. A room joined before and refused on a rejoin
      // (a new token) counts as removed.
      if (this.name === undefined) this.refuse(error);
      else this.removed();
      return;
    }
    this.joinFailures = 0;
    if (!this.isLive || generation !== this.generation) return;
    const result: JoinResult = {
      room: String(ack.room),
      offset: typeof ack.offset === "number" ? ack.offset : undefined,
      epoch: typeof ack.epoch === "string" ? ack.epoch : undefined,
      recovered: typeof ack.recovered === "boolean" ? ack.recovered : undefined,
    };
    // Another name for the same spec: `getToken` gave a token of another tenant. The positions
    // seen are another room's.
    const renamed = this.name !== undefined && this.name !== result.room;
    this.name = result.room;
    if (renamed) {
      this.position = undefined;
      this.resync({ room: result.room, reason: "not_recovered", epoch: result.epoch, offset: result.offset });
    } else if (since && result.recovered === false) {
      this.resync({ room: result.room, reason: "not_recovered", epoch: result.epoch, offset: result.offset });
    } else if (result.epoch !== undefined && result.offset !== undefined) {
      this.advance(result.offset, result.epoch);
    }
    this.settle?.resolve(result);
    this.settle = undefined;
    this.joinListeners.emit(result);
    this.presence.joined();
  }

  /** A published event for this room: delivered unless it is one already delivered. */
  deliver(event: string, data: unknown, meta: EventMeta): void {
    if (!this.isLive) return;
    if (typeof meta.offset === "number" && typeof meta.epoch === "string") {
      const seen = this.position;
      if (seen && seen.epoch === meta.epoch && meta.offset <= seen.offset) return;
      this.position = { offset: meta.offset, epoch: meta.epoch };
    }
    this.listeners.get(event)?.emit(data, meta);
    this.anyListeners.emit(event, data, meta);
  }

  resync(resync: Resync): void {
    if (!this.isLive) return;
    // From here on the room's state comes from the application's refetch: later events count.
    if (resync.epoch !== undefined && resync.offset !== undefined) this.position = { offset: resync.offset, epoch: resync.epoch };
    this.resyncListeners.emit(resync);
  }

  /** Runs an application listener: one that throws does not keep the others from running. */
  call(listener: () => void): void {
    try {
      listener();
    } catch (cause) {
      this.client.reportError(new RoomcastError("listener_failed", `a listener of ${this.key} threw`, { cause }));
    }
  }

  /** Not disposed, refused or removed: its handles get events and it is rejoined. */
  get isLive(): boolean {
    return !this.disposed && !this.refused && !this.removedByBackend;
  }

  /**
   * The client ended `closed` by itself before the first join was answered: `ready` rejects
   * with why, and the room stays, to be joined if the application calls `client.reconnect()`.
   */
  failPending(error: RoomcastError): void {
    if (!this.settle) return;
    this.settle.reject(error);
    // Handles taken from now on wait for the join a `reconnect()` makes.
    this.ready = new Promise<JoinResult>((resolve, reject) => (this.settle = { resolve, reject }));
    this.ready.catch(() => {});
  }

  /** The first join was refused: `ready` rejects, and the next `client.join()` starts afresh. */
  refuse(error: RoomcastError): void {
    this.refused = true;
    this.settle?.reject(error);
    this.settle = undefined;
    this.client.forget(this);
  }

  disconnected(): void {
    this.joinFailures = 0;
    this.typing.disconnected();
  }

  /** The gateway took the socket out of the room: no more events, no rejoin. */
  removed(): void {
    if (this.removedByBackend || this.disposed) return;
    this.removedByBackend = true;
    this.typing.disconnected();
    this.presence.clear();
    this.removedListeners.emit();
  }

  /** A backend put the socket (back) in the room (`roomcast:joined`): live again from `at`. */
  restored(name: string, at: Position | undefined): void {
    if (this.disposed || this.refused) return;
    this.name = name;
    if (!this.removedByBackend) {
      if (at) this.advance(at.offset, at.epoch);
      return;
    }
    this.removedByBackend = false;
    // Whatever was published while the room was away is not coming: fetch its state again.
    // (No position in the notice: the gateway could not read history, so nothing says otherwise.)
    const seen = this.position;
    if (!at || !seen || seen.epoch !== at.epoch || at.offset > seen.offset) {
      this.resync({ room: name, reason: "not_recovered", epoch: at?.epoch, offset: at?.offset });
    }
    this.presence.joined();
  }

  onRemoved(listener: () => void): () => void {
    return this.removedListeners.add(listener);
  }

  dispose(): void {
    this.disposed = true;
    clearTimeout(this.leaveTimer);
    this.typing.dispose();
    this.presence.dispose();
    this.settle?.reject(new RoomcastError("closed", "the room was left before it was joined"));
    this.settle = undefined;
  }

  on(event: string, listener: Listener): () => void {
    let listeners = this.listeners.get(event);
    if (!listeners) this.listeners.set(event, (listeners = new Listeners((run) => this.call(run))));
    return listeners.add(listener);
  }

  onAny(listener: (event: string, data: unknown, meta: EventMeta) => void): () => void {
    return this.anyListeners.add(listener);
  }

  onResync(listener: (resync: Resync) => void): () => void {
    return this.resyncListeners.add(listener);
  }

  onJoin(listener: (result: JoinResult) => void): () => void {
    return this.joinListeners.add(listener);
  }

  private advance(offset: number, epoch: string): void {
    const seen = this.position;
    if (!seen || seen.epoch !== epoch || offset > seen.offset) this.position = { offset, epoch };
  }
}

/**
 * A room joined through `client.join()`. Several handles may share one joined room; each is
 * left once with `leave()`, and the room is left when the last one is.
 */
export class Room<E extends EventMap = EventMap> {
  private left = false;
  private readonly unsubscribers = new Set<() => void>();

  /** @internal */
  constructor(private readonly state: RoomState) {}

  /** `{ project }` or `{ channel }`, as joined. */
  get spec(): RoomSpec {
    return this.state.spec;
  }

  /** The room's full name (`tenant:acme:channel:general`), once joined. */
  get name(): string | undefined {
    return this.state.name;
  }

  /** The last event delivered: what a rejoin asks to be replayed after. */
  get position(): Position | undefined {
    return this.state.position;
  }

  /** Resolves with the first join's answer; rejects with its code if it was refused. */
  get ready(): Promise<JoinResult> {
    return this.state.ready;
  }

  /** Calls `listener` with each `event` published to the room, in order, once each. */
  on<K extends keyof E & string>(event: K, listener: (data: E[K], meta: EventMeta) => void): () => void {
    return this.track(this.state.on(event, listener as Listener));
  }

  /** Every published event of the room. */
  onAny(listener: (event: string, data: unknown, meta: EventMeta) => void): () => void {
    return this.track(this.state.onAny(listener));
  }

  /**
   * Events were missed beyond what history keeps (a long disconnect, a Redis restart): fetch the
   * room's state again. One callback for the gateway's `roomcast:resync` and for a rejoin that
   * came back `recovered: false`.
   */
  onResync(listener: (resync: Resync) => void): () => void {
    return this.track(this.state.onResync(listener));
  }

  /**
   * A backend took this connection out of the room (`POST /v1/leave`), or a refreshed
   * token no longer grants it: no more events, and it is not rejoined. `leave()` the handle.
   */
  onRemoved(listener: () => void): () => void {
    return this.track(this.state.onRemoved(listener));
  }

  /** Every (re)join's answer: after each reconnect, once what was missed was replayed. */
  onJoin(listener: (result: JoinResult) => void): () => void {
    return this.track(this.state.onJoin(listener));
  }

  /** Who is in the room (project and channel rooms). */
  get presence(): Presence {
    return new Presence(this.state.presence, (u) => this.track(u));
  }

  /** Typing indicators (channel rooms only). */
  get typing(): Typing {
    return new Typing(this.state.typing, (u) => this.track(u));
  }

  /** Connections and users in the room, cluster-wide. */
  async occupancy(): Promise<Occupancy> {
    const ack = await this.state.client.pacedRead("room:occupancy", this.state.spec);
    return { room: String(ack.room), connections: Number(ack.connections), users: Number(ack.users) };
  }

  /** The room's retained events: the latest `limit`, or those after `after`. */
  async history(options: { after?: number; limit?: number } = {}): Promise<HistoryPage> {
    const ack = await this.state.client.pacedRead("history", { ...this.state.spec, ...options });
    return ack as unknown as HistoryPage;
  }

  /** Publishes to this channel from the client (the token's `publish` claim must grant it). */
  async publish<K extends keyof E & string>(event: K, data: E[K], options: { id?: string; exceptSelf?: boolean } = {}): Promise<PublishReceipt> {
    const channel = this.state.spec.channel;
    if (channel === undefined) throw new RoomcastError("not_a_channel", "only channels take client publishes");
    const ack = await this.state.client.request("publish", {
      channel,
      event,
      data,
      ...(options.id !== undefined ? { id: options.id } : {}),
      ...(options.exceptSelf ? { except: "self" } : {}),
    });
    return ack as unknown as PublishReceipt;
  }

  /** Stops this handle's listeners; the room is left once every handle on it was. Idempotent. */
  leave(): void {
    if (this.left) return;
    this.left = true;
    for (const unsubscribe of this.unsubscribers) unsubscribe();
    this.unsubscribers.clear();
    this.state.release();
  }

  private track(unsubscribe: () => void): () => void {
    if (this.left) {
      unsubscribe();
      return () => {};
    }
    const wrapped = () => {
      unsubscribe();
      this.unsubscribers.delete(wrapped);
    };
    this.unsubscribers.add(wrapped);
    return wrapped;
  }
}

/** How long a reconciling `presence:list` waits after a presence change (multi-tab counts). */
const PRESENCE_RECONCILE_MS = 1_000;
const PRESENCE_PAGE = 100;

/** @internal */
export class PresenceState {
  users = new Map<string, PresenceUser>();
  loaded = false;
  private readonly listeners: Listeners<[PresenceUser[]]>;
  private reconcileTimer: ReturnType<typeof setTimeout> | undefined;
  private loading: Promise<void> | undefined;
  /** An event came during a read: read again once it is done. */
  private stale = false;
  /** Pages the last read took: a big room's re-reads are spaced out accordingly. */
  private pages = 1;

  constructor(readonly room: RoomState) {
    this.listeners = new Listeners((run) => room.call(run));
  }

  subscribe(listener: (users: PresenceUser[]) => void): () => void {
    const remove = this.listeners.add(listener);
    if (this.room.name !== undefined && !this.loaded) void this.load();
    if (this.loaded) this.room.call(() => listener(this.list()));
    return remove;
  }

  list(): PresenceUser[] {
    return [...this.users.values()];
  }

  /** After every (re)join: what changed while away is in the list, not in events. */
  joined(): void {
    if (this.listeners.size > 0 || this.loaded) void this.load();
  }

  /**
   * Reads every page of `presence:list`. Events that arrive meanwhile may be older or newer than
   * the pages: another read follows, so that the list ends up as the gateway has it.
   */
  load(): Promise<void> {
    if (this.loading) {
      this.stale = true;
      return this.loading;
    }
    this.stale = false;
    this.loading = (async () => {
      try {
        const users = new Map<string, PresenceUser>();
        this.pages = 0;
        for (let offset: number | null = 0; offset !== null; ) {
          // Every room's reads share the socket's presence:list budget (5/s): paced client-wide,
          // and a refused page is asked again, not the whole list.
          await this.room.client.readPace.take();
          if (!this.room.isLive) return;
          let ack: Record<string, unknown>;
          try {
            ack = await this.room.client.request("presence:list", { ...this.room.spec, offset, limit: PRESENCE_PAGE });
          } catch (e) {
            const error = e as RoomcastError;
            if (error.code !== "rate_limited") throw error;
            this.room.client.readPace.hold(error.retryAfterMs ?? 1_000);
            continue;
          }
          this.pages += 1;
          for (const u of (ack.users as PresenceUser[]) ?? []) users.set(u.userId, u);
          offset = typeof ack.next === "number" ? ack.next : null;
        }
        if (!this.room.isLive) return;
        this.users = users;
        this.loaded = true;
        this.emit();
      } catch (e) {
        this.room.client.reportUnlessGone(e as RoomcastError);
      } finally {
        this.loading = undefined;
      }
      if (this.stale) this.reconcile(this.reconcileDelay());
    })();
    return this.loading;
  }

  /** The room was taken away: nobody is known to be in it. */
  clear(): void {
    clearTimeout(this.reconcileTimer);
    this.reconcileTimer = undefined;
    this.users = new Map();
    this.loaded = false;
    this.emit();
  }

  onEvent(event: string, payload: Record<string, unknown>): void {
    const userId = payload.userId;
    if (typeof userId !== "string") return;
    if (event === "presence:join") {
      const had = this.users.get(userId);
      this.users.set(userId, {
        userId,
        status: typeof payload.status === "string" ? payload.status : "online",
        connections: Math.max(had?.connections ?? 0, 1),
        since: typeof payload.since === "number" ? payload.since : had?.since,
      });
    } else if (event === "presence:leave") {
      this.users.delete(userId);
    } else {
      const had = this.users.get(userId);
      if (had && typeof payload.status === "string") this.users.set(userId, { ...had, status: payload.status });
    }
    if (this.loading) this.stale = true;
    this.emit();
    // A user's second tab opening or closing makes no event: a list read a moment after any
    // join or leave has the counts (at most one read per second per room).
    if (event !== "presence:update" && this.listeners.size > 0) this.reconcile(this.reconcileDelay());
  }

  dispose(): void {
    clearTimeout(this.reconcileTimer);
    this.listeners.clear();
  }

  private reconcile(ms: number): void {
    if (this.reconcileTimer !== undefined || !this.room.isLive) return;
    this.reconcileTimer = setTimeout(() => {
      this.reconcileTimer = undefined;
      if (this.room.isLive && this.room.client.socket.connected) void this.load();
    }, ms);
  }

  /** A second, or a quarter second per page of the last read (a 2,000-user room: 5 s). */
  private reconcileDelay(): number {
    return Math.max(PRESENCE_RECONCILE_MS, this.pages * 250);
  }

  private emit(): void {
    this.listeners.emit(this.list());
  }
}

/** Who is in a room: one entry per user, with their connection count and status. */
export class Presence {
  /** @internal */
  constructor(
    private readonly state: PresenceState,
    private readonly track: (unsubscribe: () => void) => () => void,
  ) {}

  /** The users as last known (empty until the first list arrived; see `subscribe`). */
  get users(): PresenceUser[] {
    return this.state.list();
  }

  /** Calls `listener` with the whole list at every change (and at once if it is loaded). */
  subscribe(listener: (users: PresenceUser[]) => void): () => void {
    return this.track(this.state.subscribe(listener));
  }

  /** Reads the list again (counts of a user's tabs change without an event). */
  refresh(): Promise<void> {
    return this.state.load();
  }

  /** This connection's status in every room it is in (presence is per connection, not per room). */
  setStatus(status: Status): Promise<void> {
    return this.state.room.client.setStatus(status);
  }
}

/** Sends of `typing: true` at most this often while the user types (the gateway's throttle). */
const TYPING_THROTTLE_MS = 2_000;
/** No keystroke for this long: `typing: false` is sent. */
const TYPING_IDLE_MS = 3_000;

/** @internal */
export class TypingState {
  private readonly typists = new Map<string, ReturnType<typeof setTimeout>>();
  private readonly listeners: Listeners<[string[]]>;
  private lastSent = -Infinity;
  private shown = false;
  private idleTimer: ReturnType<typeof setTimeout> | undefined;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly throttleMs: number;
  private readonly idleMs: number;

  constructor(private readonly room: RoomState) {
    this.listeners = new Listeners((run) => room.call(run));
    this.throttleMs = room.client.typingOptions.throttleMs ?? TYPING_THROTTLE_MS;
    this.idleMs = room.client.typingOptions.idleMs ?? TYPING_IDLE_MS;
  }

  private channel(): string {
    const channel = this.room.spec.channel;
    if (channel === undefined) throw new RoomcastError("not_a_channel", "typing indicators are for channels");
    return channel;
  }

  start(): void {
    const channel = this.channel();
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => this.stop(), this.idleMs);
    if (!this.room.isLive || !this.room.client.socket.connected) return;
    const now = Date.now();
    if (now - this.lastSent < this.throttleMs) return;
    this.lastSent = now;
    this.shown = true;
    this.send(channel, true);
  }

  stop(): void {
    const channel = this.channel();
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    if (!this.shown) return;
    this.shown = false;
    // `lastSent` stays: the gateway holds a start that follows a stop until its interval ends.
    this.send(channel, false);
  }

  subscribe(listener: (users: string[]) => void): () => void {
    const remove = this.listeners.add(listener);
    this.room.call(() => listener(this.list()));
    return remove;
  }

  list(): string[] {
    return [...this.typists.keys()];
  }

  onEvent(payload: Record<string, unknown>): void {
    const userId = payload.userId;
    if (typeof userId !== "string") return;
    clearTimeout(this.typists.get(userId));
    if (payload.typing === true) {
      // The gateway turns an indicator off after its TTL; this one does too if that is missed.
      const ttl = typeof payload.ttlMs === "number" ? payload.ttlMs : 6_000;
      this.typists.set(
        userId,
        setTimeout(() => {
          this.typists.delete(userId);
          this.emit();
        }, ttl),
      );
    } else {
      this.typists.delete(userId);
    }
    this.emit();
  }

  disconnected(): void {
    // Indicators were the previous connection's; the gateway stops ours when it goes.
    this.shown = false;
    this.lastSent = -Infinity;
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    for (const timer of this.typists.values()) clearTimeout(timer);
    this.typists.clear();
    this.emit();
  }

  dispose(): void {
    this.disconnected();
    this.listeners.clear();
  }

  private send(channel: string, typing: boolean): void {
    this.room.client.request("typing", { channel, typing }).then(
      (ack) => {
        // Held by the gateway's throttle (a start right after a stop): others did not see it.
        // Send it again when the interval ends if the user is still typing.
        if (typing && ack.throttled === true && this.retryTimer === undefined) {
          this.retryTimer = setTimeout(() => {
            this.retryTimer = undefined;
            if (this.idleTimer !== undefined && this.room.isLive && this.room.client.socket.connected) {
              this.lastSent = Date.now();
              this.shown = true;
              this.send(channel, true);
            }
          }, this.throttleMs);
        }
      },
      (e: RoomcastError) => {
        // Refused indicators are not worth an error: the next keystroke retries.
        if (e.code !== "rate_limited") this.room.client.reportUnlessGone(e);
      },
    );
  }

  private emit(): void {
    this.listeners.emit(this.list());
  }
}

/** Typing indicators of a channel: `start()` on each keystroke, `stop()` when the message is sent. */
export class Typing {
  /** @internal */
  constructor(
    private readonly state: TypingState,
    private readonly track: (unsubscribe: () => void) => () => void,
  ) {}

  /** Call on every keystroke: sends at most one indicator per 2 s, and stops after 3 s idle. */
  start(): void {
    this.state.start();
  }

  /** The user stopped (sent the message, cleared the field). */
  stop(): void {
    this.state.stop();
  }

  /** The other users typing now. */
  get users(): string[] {
    return this.state.list();
  }

  /** Calls `listener` with the users typing, at once and at every change. */
  subscribe(listener: (users: string[]) => void): () => void {
    return this.track(this.state.subscribe(listener));
  }
}

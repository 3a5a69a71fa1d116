/** A room to join: a project or a channel of the token's tenant. */
export type RoomSpec = { project: string; channel?: never } | { channel: string; project?: never };

/** Where a room's history stands: what `since` carries on a rejoin. */
export interface Position {
  offset: number;
  epoch: string;
}

/** The second argument of every published event. */
export interface EventMeta {
  /** The full room name, e.g. `tenant:acme:channel:general`. */
  room: string;
  id?: string;
  ts?: number;
  /** Absent for raw publishes, which bypass history. */
  offset?: number;
  epoch?: string;
  /** The publishing user, for a client's `publish`. */
  from?: string;
}

/** The answer to a join (or a rejoin after a reconnect). */
export interface JoinResult {
  room: string;
  offset?: number;
  epoch?: string;
  /** On a rejoin with `since`: whether everything missed was replayed. */
  recovered?: boolean;
}

/** Why a room's state must be fetched again: events were missed beyond what history keeps. */
export interface Resync {
  room: string;
  /** `gap` / `epoch_changed` from the gateway; `not_recovered` when a rejoin could not recover. */
  reason: "gap" | "epoch_changed" | "not_recovered" | (string & {});
  epoch?: string;
  offset?: number;
}

export type Status = "online" | "away";

/** One user in a room's presence, however many tabs or devices they have open. */
export interface PresenceUser {
  userId: string;
  status: Status | (string & {});
  /** Their connections in the room, cluster-wide, as of the last list the client fetched. */
  connections: number;
  since?: number;
}

export interface Occupancy {
  room: string;
  connections: number;
  users: number;
}

export interface PublishReceipt {
  id: string;
  room: string;
  offset: number;
  epoch: string;
  duplicate?: boolean;
}

export interface HistoryPage {
  room: string;
  epoch: string;
  offset: number;
  events: { id: string; event: string; data: unknown; ts: number; offset: number; from?: string }[];
  more: boolean;
}

/** `connecting` (first connect or after `close`d), `connected`, `reconnecting`, `closed` (for good). */
export type ConnectionState = "connecting" | "connected" | "reconnecting" | "closed";

/** Events a room's payloads are typed by: `{ message: { text: string } }`. */
export type EventMap = Record<string, unknown>;

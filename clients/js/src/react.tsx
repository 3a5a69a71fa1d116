import { createContext, useCallback, useContext, useEffect, useLayoutEffect, useRef, useState, useSyncExternalStore, type ReactNode } from "react";

import type { RoomcastClient } from "./client.js";
import type { Room } from "./room.js";
import type { ConnectionState, EventMap, EventMeta, PresenceUser, RoomSpec } from "./types.js";

const ClientContext = createContext<RoomcastClient | null>(null);

/** `useLayoutEffect` in the browser (before anything else sees the new props), `useEffect` on a server. */
const useIsomorphicLayoutEffect = typeof window === "undefined" ? useEffect : useLayoutEffect;

/**
 * Makes `client` (from `connect()`, created once, outside render) available to the hooks below.
 * The provider does not close it: the application owns it.
 */
export function RoomcastProvider({ client, children }: { client: RoomcastClient; children?: ReactNode }) {
  return <ClientContext.Provider value={client}>{children}</ClientContext.Provider>;
}

/** The client of the nearest `RoomcastProvider`. */
export function useRoomcast(): RoomcastClient {
  const client = useContext(ClientContext);
  if (!client) throw new Error("useRoomcast: no RoomcastProvider above this component");
  return client;
}

/** The connection's state, re-rendering at every change. */
export function useConnectionState(): ConnectionState {
  const client = useRoomcast();
  const subscribe = useCallback((onChange: () => void) => client.onStateChange(onChange), [client]);
  return useSyncExternalStore(
    subscribe,
    () => client.state,
    () => client.state,
  );
}

/**
 * Joins `spec` while the component is mounted; `undefined` until the effect ran. Components
 * using the same room share one join (the client counts them), and StrictMode's double mount
 * does not leave and join again. `null` joins nothing.
 */
export function useRoom<E extends EventMap = EventMap>(spec: RoomSpec | null): Room<E> | undefined {
  const client = useRoomcast();
  // The spec's fields, not the object: a literal is a new object at every render.
  const project = spec?.project;
  const channel = spec?.channel;
  const [room, setRoom] = useState<Room<E> | undefined>(undefined);
  useEffect(() => {
    const joining = project !== undefined ? { project } : channel !== undefined ? { channel } : null;
    if (joining === null) {
      setRoom(undefined);
      return;
    }
    const joined = client.join<E>(joining);
    setRoom(joined);
    return () => {
      joined.leave();
      setRoom((current) => (current === joined ? undefined : current));
    };
  }, [client, project, channel]);
  return room;
}

/** Calls `handler` for each `event` published to `room` (the latest `handler`, no re-subscribing). */
export function useEvent<E extends EventMap, K extends keyof E & string>(
  room: Room<E> | undefined,
  event: K,
  handler: (data: E[K], meta: EventMeta) => void,
): void {
  const latest = useRef(handler);
  // Before any event can reach the committed component: an event between a render and its
  // commit calls the handler of that render.
  useIsomorphicLayoutEffect(() => {
    latest.current = handler;
  });
  useEffect(() => {
    if (!room) return;
    return room.on(event, (data, meta) => latest.current(data, meta));
  }, [room, event]);
}

/** The room's users (one entry per user, with their connection count and status). */
export function usePresence(room: Room | undefined): PresenceUser[] {
  const [users, setUsers] = useState<PresenceUser[]>([]);
  useEffect(() => {
    // Another room's users must not show while this one's list loads.
    setUsers([]);
    if (!room) return;
    return room.presence.subscribe(setUsers);
  }, [room]);
  return users;
}

/**
 * The users typing in a channel, and `start()` / `stop()` for this user: call `start` on each
 * keystroke (throttled for you, stopped after 3 s without one) and `stop` when the message is sent.
 */
export function useTyping(room: Room | undefined): { typing: string[]; start: () => void; stop: () => void } {
  const [typing, setTyping] = useState<string[]>([]);
  // Whether this component started an indicator: only then does its unmount stop it (another
  // component on the same channel may be the one typing).
  const started = useRef(false);
  useEffect(() => {
    setTyping([]);
    if (!room || room.spec.channel === undefined) return;
    const typingOf = room.typing;
    const unsubscribe = typingOf.subscribe(setTyping);
    return () => {
      unsubscribe();
      if (started.current) typingOf.stop();
      started.current = false;
    };
  }, [room]);
  const start = useCallback(() => {
    if (room?.spec.channel === undefined) return;
    started.current = true;
    room.typing.start();
  }, [room]);
  const stop = useCallback(() => {
    if (room?.spec.channel === undefined) return;
    started.current = false;
    room.typing.stop();
  }, [room]);
  return { typing, start, stop };
}

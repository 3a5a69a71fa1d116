// Join rooms and keep them across reconnects without losing an event.
export function joinWithRecovery(socket, rooms, { onEvent, onResync }) {
  const last = new Map(); // room name → { offset, epoch } of the last event seen
  const names = new Map(); // join payload → room name
  const advance = (room, offset, epoch) => {
    const seen = last.get(room);
    if (!seen || seen.epoch !== epoch || offset > seen.offset) last.set(room, { offset, epoch });
  };
  socket.on("connect", async () => {
    for (const room of rooms) {
      const since = last.get(names.get(JSON.stringify(room)));
      const ack = await socket.emitWithAck("join", { ...room, since });
      if (!ack.ok) continue;
      names.set(JSON.stringify(room), ack.room);
      if (since && !ack.recovered) onResync(ack.room); // missed more than history keeps
      if (ack.epoch) advance(ack.room, ack.offset, ack.epoch);
    }
  });
  socket.onAny((event, data, meta) => {
    if (meta?.offset === undefined) return; // not a published event
    advance(meta.room, meta.offset, meta.epoch);
    onEvent(event, data, meta);
  });
  socket.on("roomcast:resync", ({ room }) => onResync(room));
}

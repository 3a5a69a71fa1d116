-- A room's history position and the events after an offset.
-- KEYS: meta (hash: epoch, offset), history (stream, ids <offset>-0)
-- ARGV: after (offset), count, epoch for a room without one, TTL of that epoch (ms)
-- Returns { epoch, offset, envelope1, envelope2, ... } with the envelopes after `after`, in order.
-- A room without an epoch gets one now, so a client that joins before the first publish can
-- recover from offset 0 of that epoch. Reads are what clients cause, so what they create lives
-- only as long as history does (the gateway passes the history TTL); the first publish makes
-- it last as long as a published room's meta.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[3]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local offset = redis.call('HGET', KEYS[1], 'offset')
if not offset then
  -- Never published to: kept as long as it is read (joined) within the history TTL, so a
  -- member of a quiet room keeps its epoch; a publish sets the longer meta TTL.
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local tail = tonumber(offset or '0')
local out = { epoch, tail }
local after = tonumber(ARGV[1])
if after < tail then
  local entries = redis.call('XRANGE', KEYS[2], (after + 1) .. '-0', '+', 'COUNT', ARGV[2])
  for _, entry in ipairs(entries) do
    out[#out + 1] = entry[2][2]
  end
end
return out

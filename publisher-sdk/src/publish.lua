-- Roomcast: publish an event to a room with history (wire format v1, see PROTOCOL.md).
-- Assigns the room's next offset, appends the event to the room's bounded history and publishes
-- it, in one atomic step: no subscriber can see an offset the history does not have.
--
-- KEYS[1]  room meta (hash)        {prefix}:{<room>}:meta     fields: epoch, offset
-- KEYS[2]  room history (stream)   {prefix}:{<room>}:history  entry id <offset>-0, fields: e, t
-- ARGV[1]  channel                 {prefix}:{<room>}
-- ARGV[2]  PUBLISH (standalone, Sentinel) or SPUBLISH (Redis Cluster)
-- ARGV[3]  the envelope: a JSON object without "offset" and "epoch"
-- ARGV[4]  history size: events kept
-- ARGV[5]  history TTL, ms: entries older are dropped; an idle room's history expires after it
-- ARGV[6]  epoch for a room that has none yet (random; the SDK uses 16 hex digits)
-- ARGV[7]  meta TTL, ms (the room's offset and epoch outlive its history)
-- Optional, for idempotent publishing (a retry with the same event id is published once):
-- KEYS[3]  the event's dedupe key      {prefix}:{<room>}:dedupe:<event id>
-- ARGV[8]  how long the id is remembered, ms
-- Returns { subscribers, offset, epoch }, or { subscribers, offset, epoch, 1 } with the first
-- publish's values when KEYS[3] says this event id was already published.
local envelope = string.gsub(ARGV[3], '%s+$', '')
if string.sub(envelope, -1) ~= '}' then
  return redis.error_reply('ERR roomcast: the envelope must be a JSON object')
end
if KEYS[3] then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local subscribers, offset, epoch = string.match(seen, '^(%d+):(%d+):(.*)$')
    return { tonumber(subscribers), tonumber(offset), epoch, 1 }
  end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[6]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[7])
-- Appended as text: the payload is never decoded, so its numbers keep their precision.
envelope = string.sub(envelope, 1, -2) .. ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '"}'

local size, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[2], 'MAXLEN', size, offset .. '-0', 'e', envelope, 't', now)
-- Age cap: drop expired entries from the head, a few per publish. In the steady state (nothing
-- expired) that is one look at the head entry: reading more per publish tripled the script's cost.
for _ = 1, 4 do
  local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
  if not head or tonumber(head[2][4]) >= now - ttl then break end
  redis.call('XTRIM', KEYS[2], 'MINID', (tonumber(string.match(head[1], '^(%d+)')) + 1) .. '-0')
end
redis.call('PEXPIRE', KEYS[2], ttl)
local subscribers = redis.call(ARGV[2], ARGV[1], envelope)
if KEYS[3] then
  redis.call('SET', KEYS[3], subscribers .. ':' .. offset .. ':' .. epoch, 'PX', ARGV[8])
end
return { subscribers, offset, epoch }

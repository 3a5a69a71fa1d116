-- The next events a sink's group has not read, now pending for this consumer; counts the events
-- the cap trimmed before the group read them (a gap in the sequence numbers).
-- KEYS: stream, cursors. ARGV: group, consumer, count.
-- Returns { dropped, id1, event1, id2, event2, ... }.
local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
local out = { 0 }
if not r then return out end
local entries = r[1][2]
local cursor = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
if #entries > 0 and cursor >= 0 then
  for i = 1, #entries[1][2], 2 do
    if entries[1][2][i] == 'seq' then
      local first = tonumber(entries[1][2][i + 1])
      if first > cursor + 1 then out[1] = first - cursor - 1 end
    end
  end
end
local last = entries_flatten(entries, out, cursor)
if last >= 0 then redis.call('HSET', KEYS[2], ARGV[1], last) end
return out

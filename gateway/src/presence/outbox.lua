-- A room's outbox (see events.lua): with ARGV[1] = 'take', the events `owner` (ARGV[2]) recorded
-- and has not forwarded, as JSON; with 'done', removes the events ARGV[3..] of `owner` (they are
-- in the event log now). KEYS: outbox.
local prefix = ARGV[2] .. '\n'
if ARGV[1] == 'take' then
  local out = {}
  for _, entry in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
    if string.sub(entry, 1, #prefix) == prefix then out[#out + 1] = string.sub(entry, #prefix + 1) end
  end
  return out
end
for i = 3, #ARGV do
  redis.call('LREM', KEYS[1], 1, prefix .. ARGV[i])
end
return #ARGV - 2

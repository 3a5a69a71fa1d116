-- A room's occupancy: { connections, distinct users }, both O(1).
-- KEYS: counts (user → connections, '#' → all of them), since (zset of present users).
local total = redis.call('HGET', KEYS[1], '#')
if not total then
  -- Presence recorded before '#' existed (an upgrade): count once, kept up to date from now on.
  local fields = redis.call('HGETALL', KEYS[1])
  local sum = 0
  for i = 2, #fields, 2 do
    sum = sum + tonumber(fields[i])
  end
  if sum > 0 then redis.call('HSET', KEYS[1], '#', sum) end
  total = sum
end
return { tonumber(total), redis.call('ZCARD', KEYS[2]) }

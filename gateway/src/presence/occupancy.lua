-- A room's occupancy: { connections, distinct users }, O(1) when consistent.
-- KEYS: counts (user → connections, '#' → all of them), since (zset of present users).
local users = redis.call('ZCARD', KEYS[2])
local total = tonumber(redis.call('HGET', KEYS[1], '#') or '0')
if users == 0 then
  -- An empty room has no connections: a stale '#' (replicas of an older version changed the
  -- counts meanwhile) goes.
  if total ~= 0 then redis.call('HDEL', KEYS[1], '#') end
  total = 0
elseif total < users then
  -- Missing (counts from before '#') or stale: every present user has a connection.
  total = total_recount()
end
return { total, users }

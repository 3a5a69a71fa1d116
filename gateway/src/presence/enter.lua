-- A replica adds `delta` connections of a user to a room's presence.
-- KEYS: counts (hash), since (zset), status (hash), replicas (hash); all in the room's slot.
-- ARGV: user, replica, delta, now_ms, status, channel, join envelope, publish command
-- Publishes the join envelope (atomically with the change) when the user was not present.
local user, member, delta = ARGV[1], ARGV[2] .. '|' .. ARGV[1], tonumber(ARGV[3])
total_ensure()
redis.call('HINCRBY', KEYS[4], member, delta)
local total = redis.call('HINCRBY', KEYS[1], user, delta)
total_changed(total - delta, total)
if total == delta then
  redis.call('ZADD', KEYS[2], ARGV[4], user)
  redis.call('HSET', KEYS[3], user, ARGV[5])
  redis.call(ARGV[8], ARGV[6], ARGV[7])
end
return total

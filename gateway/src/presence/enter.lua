-- A replica adds `delta` connections of a user to a room's presence.
-- KEYS: counts (hash), since (zset), status (hash), replicas (hash), outbox (list); all in the
-- room's slot.
-- ARGV: user, replica, delta, now_ms, status, channel, join envelope, publish command, then the
-- events block (events.lua, ARGV[9..15]).
-- Publishes the join envelope (atomically with the change) and records the lifecycle events
-- when the user was not present. Returns { the user's connections, events... }.
local user, member, delta = ARGV[1], ARGV[2] .. '|' .. ARGV[1], tonumber(ARGV[3])
ev_init(9)
total_ensure()
redis.call('HINCRBY', KEYS[4], member, delta)
local total = redis.call('HINCRBY', KEYS[1], user, delta)
total_changed(total - delta, total)
if total == delta then
  redis.call('ZADD', KEYS[2], ARGV[4], user)
  redis.call('HSET', KEYS[3], user, ARGV[5])
  ev_publish(ARGV[8], ARGV[6], ARGV[7])
  ev_joined(user)
end
return ev_answer(total)

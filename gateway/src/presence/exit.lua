-- A replica removes one connection of a user from a room's presence.
-- KEYS: counts, since, status, replicas, outbox (as enter.lua)
-- ARGV: user, replica, channel, leave envelope, publish command, then the events block
-- (ARGV[6..12]).
-- Publishes the leave envelope and records the lifecycle events when that was the user's last
-- connection anywhere. A replica with no recorded share (its state was lost) changes nothing.
-- Returns { the user's connections (-1: no share), events... }.
local user, member = ARGV[1], ARGV[2] .. '|' .. ARGV[1]
ev_init(6)
local mine = redis.call('HINCRBY', KEYS[4], member, -1)
if mine <= 0 then redis.call('HDEL', KEYS[4], member) end
if mine < 0 then return ev_answer(-1) end
total_ensure()
local total = redis.call('HINCRBY', KEYS[1], user, -1)
total_changed(total + 1, total)
if total <= 0 then
  redis.call('HDEL', KEYS[1], user)
  redis.call('ZREM', KEYS[2], user)
  redis.call('HDEL', KEYS[3], user)
  ev_publish(ARGV[5], ARGV[3], ARGV[4])
  ev_left(user)
end
return ev_answer(total)

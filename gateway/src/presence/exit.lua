-- A replica removes one connection of a user from a room's presence.
-- KEYS: counts, since, status, replicas (as enter.lua)
-- ARGV: user, replica, channel, leave envelope, publish command
-- Publishes the leave envelope when that was the user's last connection anywhere. A replica
-- with no recorded share (its state was lost) changes nothing.
local user, member = ARGV[1], ARGV[2] .. '|' .. ARGV[1]
local mine = redis.call('HINCRBY', KEYS[4], member, -1)
if mine <= 0 then redis.call('HDEL', KEYS[4], member) end
if mine < 0 then return -1 end
total_ensure()
local total = redis.call('HINCRBY', KEYS[1], user, -1)
total_changed(total + 1, total)
if total <= 0 then
  redis.call('HDEL', KEYS[1], user)
  redis.call('ZREM', KEYS[2], user)
  redis.call('HDEL', KEYS[3], user)
  redis.call(ARGV[5], ARGV[3], ARGV[4])
end
return total

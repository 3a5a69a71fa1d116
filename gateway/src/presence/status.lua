-- Sets a present user's status in a room; publishes the update envelope if it changed.
-- KEYS: counts, status. ARGV: user, status, channel, update envelope, publish command
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call(ARGV[5], ARGV[3], ARGV[4])
return 1

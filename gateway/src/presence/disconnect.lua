-- One connection of a user in a tenant fewer on this replica; nothing if the replica has none
-- counted (it was admitted while Redis was away, or its share was reaped or reconciled).
-- KEYS: the tenant's counts, this replica's share (see connect.lua). ARGV: user.
-- Returns 1 if it was counted.
local share = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if share <= 0 then
  return 0
end
local function down(key, field)
  if redis.call('HINCRBY', key, field, -1) <= 0 then
    redis.call('HDEL', key, field)
  end
end
down(KEYS[2], ARGV[1])
down(KEYS[1], 'u|' .. ARGV[1])
down(KEYS[1], '*')
return 1

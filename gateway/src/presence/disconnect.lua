-- One connection of a user in a tenant fewer on this replica; nothing if the replica has none
-- counted (it was admitted while Redis was away, or its share was reaped or reconciled).
-- KEYS: the tenant's connections (see connect.lua). ARGV: replica, user. Returns 1 if counted.
local share_field = 'r|' .. ARGV[1] .. '|' .. ARGV[2]
local share = tonumber(redis.call('HGET', KEYS[1], share_field) or '0')
if share <= 0 then
  return 0
end
local function down(field, n)
  if redis.call('HINCRBY', KEYS[1], field, -n) <= 0 then
    redis.call('HDEL', KEYS[1], field)
  end
end
down(share_field, 1)
down('u|' .. ARGV[2], 1)
down('*', 1)
return 1

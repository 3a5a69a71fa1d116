-- One more connection of a user in a tenant, if the caps allow it, counted as this replica's.
-- KEYS: the tenant's counts (hash: '*' → tenant total, 'u|user' → user total), this replica's
--       share of them (hash: user → connections); both under the tenant room's hash tag.
-- ARGV: user, max per user, max per tenant (0: no limit).
-- Returns 0 admitted, 1 the user is full, 2 the tenant is full.
local user_field = 'u|' .. ARGV[1]
local max_user, max_tenant = tonumber(ARGV[2]), tonumber(ARGV[3])
if max_user > 0 and tonumber(redis.call('HGET', KEYS[1], user_field) or '0') >= max_user then
  return 1
end
if max_tenant > 0 and tonumber(redis.call('HGET', KEYS[1], '*') or '0') >= max_tenant then
  return 2
end
redis.call('HINCRBY', KEYS[1], user_field, 1)
redis.call('HINCRBY', KEYS[1], '*', 1)
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
return 0

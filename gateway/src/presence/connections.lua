-- Replaces a replica's share of a tenant's connections: takes back what it had (all of it for a
-- dead replica: n = 0) and counts what it holds now. Reads only that replica's share.
-- KEYS: the tenant's counts, the replica's share (see connect.lua). ARGV: n, then n pairs user, count.
local function add(field, n)
  if redis.call('HINCRBY', KEYS[1], field, n) <= 0 then
    redis.call('HDEL', KEYS[1], field)
  end
end
local had = redis.call('HGETALL', KEYS[2])
for i = 1, #had, 2 do
  local n = tonumber(had[i + 1])
  add('u|' .. had[i], -n)
  add('*', -n)
end
redis.call('DEL', KEYS[2])
for i = 1, tonumber(ARGV[1]) do
  local user, n = ARGV[2 * i], tonumber(ARGV[2 * i + 1])
  if n > 0 then
    redis.call('HINCRBY', KEYS[2], user, n)
    add('u|' .. user, n)
    add('*', n)
  end
end
return 0

-- Replaces a replica's share of a tenant's connections: removes what it had (all of it for a
-- dead replica, n = 0) and counts what it holds now.
-- KEYS: the tenant's connections (see connect.lua). ARGV: replica, n, then n pairs user, count.
local prefix = 'r|' .. ARGV[1] .. '|'
local function add(field, n)
  if redis.call('HINCRBY', KEYS[1], field, n) <= 0 then
    redis.call('HDEL', KEYS[1], field)
  end
end
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local field = fields[i]
  if string.sub(field, 1, #prefix) == prefix then
    local n = tonumber(fields[i + 1])
    redis.call('HDEL', KEYS[1], field)
    add('u|' .. string.sub(field, #prefix + 1), -n)
    add('*', -n)
  end
end
for i = 1, tonumber(ARGV[2]) do
  local user, n = ARGV[1 + 2 * i], tonumber(ARGV[2 + 2 * i])
  add(prefix .. user, n)
  add('u|' .. user, n)
  add('*', n)
end
return 0

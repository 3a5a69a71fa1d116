-- A page of a room's present users, oldest presence first.
-- KEYS: counts, since, status. ARGV: offset, limit
-- Returns { total, user1, since1, connections1, status1, user2, ... }
local offset, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local page = redis.call('ZRANGE', KEYS[2], offset, offset + limit - 1, 'WITHSCORES')
local out = { redis.call('ZCARD', KEYS[2]) }
for i = 1, #page, 2 do
  local user = page[i]
  out[#out + 1] = user
  out[#out + 1] = page[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[1], user) or '0'
  out[#out + 1] = redis.call('HGET', KEYS[3], user) or 'online'
end
return out

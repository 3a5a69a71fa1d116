-- Shared by every script that changes a room's counts (prepended to each): the room's
-- connections, all users together, are kept in the counts hash (KEYS[1]) under '#' (never a
-- user id), so occupancy is O(1).

-- Sets '#' to the sum of the users' counts (O(users): only when it is missing or inconsistent).
local function total_recount()
  local fields, sum = redis.call('HGETALL', KEYS[1]), 0
  for i = 1, #fields, 2 do
    if fields[i] ~= '#' then sum = sum + tonumber(fields[i + 1]) end
  end
  if sum > 0 then redis.call('HSET', KEYS[1], '#', sum) else redis.call('HDEL', KEYS[1], '#') end
  return sum
end

-- Before a count changes: counts written before '#' existed (an upgrade) are summed once.
local function total_ensure()
  if redis.call('HEXISTS', KEYS[1], '#') == 0 and redis.call('HLEN', KEYS[1]) > 0 then
    total_recount()
  end
end

-- A user's count went from `before` to `after` (a field at or below 0 is deleted: it counts 0).
local function total_changed(before, after)
  local change = math.max(after, 0) - math.max(before, 0)
  if change ~= 0 and redis.call('HINCRBY', KEYS[1], '#', change) <= 0 then
    redis.call('HDEL', KEYS[1], '#')
  end
end


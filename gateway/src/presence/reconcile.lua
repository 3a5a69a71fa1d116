-- Sets a replica's share of a room's presence to exactly what the replica holds, announcing the
-- joins and leaves that follow. Used after Redis was unreachable or lost its data.
-- KEYS: counts, since, status, replicas, outbox.
-- ARGV: replica, room, channel, publish command, now_ms, the events block (ARGV[6..12]), n, then
-- n triples (user, count, status). Returns { 1, events... }.
local replica, room, channel, publish, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
ev_init(6)
local prefix = replica .. '|'
total_ensure()
local have, want, status = {}, {}, {}
local fields = redis.call('HGETALL', KEYS[4])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, #prefix) == prefix then
    have[string.sub(fields[i], #prefix + 1)] = tonumber(fields[i + 1])
  end
end
local n = tonumber(ARGV[13])
for i = 0, n - 1 do
  local user = ARGV[14 + i * 3]
  want[user] = tonumber(ARGV[15 + i * 3])
  status[user] = ARGV[16 + i * 3]
  if have[user] == nil then have[user] = 0 end
end
local function announce(action, user, extra)
  ev_publish(publish, channel, '{"type":"presence","v":1,"room":' .. cjson.encode(room) .. ',"action":"' .. action
    .. '","user":' .. cjson.encode(user) .. extra .. ',"ts":' .. now .. '}')
end
for user, had in pairs(have) do
  local target = want[user] or 0
  if target ~= had then
    if target > 0 then redis.call('HSET', KEYS[4], prefix .. user, target) else redis.call('HDEL', KEYS[4], prefix .. user) end
    local total = redis.call('HINCRBY', KEYS[1], user, target - had)
    total_changed(total - (target - had), total)
    if total <= 0 then
      redis.call('HDEL', KEYS[1], user)
      redis.call('ZREM', KEYS[2], user)
      redis.call('HDEL', KEYS[3], user)
      if total - target + had > 0 then
        announce('leave', user, '')
        ev_left(user)
      end
    elseif total == target - had then
      redis.call('ZADD', KEYS[2], now, user)
      redis.call('HSET', KEYS[3], user, status[user] or 'online')
      announce('join', user, ',"status":' .. cjson.encode(status[user] or 'online') .. ',"since":' .. now)
      ev_joined(user)
    end
  end
end
return ev_answer(1)

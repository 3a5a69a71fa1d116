-- Removes a dead replica's share of a room's presence; publishes a leave for every user who
-- had no connection elsewhere.
-- KEYS: counts, since, status, replicas, outbox. ARGV: dead replica, room, channel, publish
-- command, now_ms, then the events block (ARGV[6..12], recorded as the dead replica's: the
-- reaper forwards them with what the dead replica left in the outbox).
-- Returns { users who left, events... }.
local prefix = ARGV[1] .. '|'
ev_init(6)
total_ensure()
local fields = redis.call('HGETALL', KEYS[4])
local left = 0
for i = 1, #fields, 2 do
  local member, n = fields[i], tonumber(fields[i + 1])
  if string.sub(member, 1, #prefix) == prefix then
    local user = string.sub(member, #prefix + 1)
    redis.call('HDEL', KEYS[4], member)
    local total = redis.call('HINCRBY', KEYS[1], user, -n)
    total_changed(total + n, total)
    if total <= 0 then
      redis.call('HDEL', KEYS[1], user)
      redis.call('ZREM', KEYS[2], user)
      redis.call('HDEL', KEYS[3], user)
      local envelope = '{"type":"presence","v":1,"room":' .. cjson.encode(ARGV[2]) .. ',"action":"leave","user":'
        .. cjson.encode(user) .. ',"ts":' .. ARGV[5] .. '}'
      ev_publish(ARGV[4], ARGV[3], envelope)
      ev_left(user)
      left = left + 1
    end
  end
end
return ev_answer(left)


-- Shared by the scripts that change who is in a room (prepended to each, after total.lua):
-- lifecycle events (gateway/src/events). A transition is recorded in the room's outbox (KEYS[5],
-- a list in the room's slot) as "<replica>\n<event JSON>" and returned with the script's answer,
-- so the replica that ran the script forwards it to the event log, or its reaper does if it dies
-- first. ev_init(i) reads ARGV[i..i+6]: the events' id prefix, the replica forwarding them, the
-- room's JSON members, then the types of a user's first and last connection and of the room's
-- first and last user ('' records nothing).
local ev = { out = {} }
local function ev_init(i)
  ev.prefix, ev.replica, ev.room = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  ev.first, ev.last, ev.occupied, ev.vacated = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
end

local function ev_record(kind, user)
  if kind == nil or kind == '' then return end
  if not ev.ts then
    local t = redis.call('TIME')
    ev.ts = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  end
  local json = '{"id":' .. cjson.encode(ev.prefix .. '-' .. (#ev.out + 1)) .. ',"type":"' .. kind .. '","ts":' .. ev.ts .. ev.room
  if user then json = json .. ',"user":' .. cjson.encode(user) end
  json = json .. '}'
  redis.call('RPUSH', KEYS[5], ev.replica .. '\n' .. json)
  ev.out[#ev.out + 1] = json
end

-- A user's first connection in the room (already added to `since`, KEYS[2]).
local function ev_joined(user)
  if redis.call('ZCARD', KEYS[2]) == 1 then ev_record(ev.occupied) end
  ev_record(ev.first, user)
end

-- A user's last connection left the room (already removed from `since`).
local function ev_left(user)
  ev_record(ev.last, user)
  if redis.call('ZCARD', KEYS[2]) == 0 then ev_record(ev.vacated) end
end

-- The script's answer: its own result, then the events it recorded.
local function ev_answer(result)
  local out = { result }
  for _, json in ipairs(ev.out) do out[#out + 1] = json end
  return out
end

-- Publishes a presence envelope unless the room has none (a user room: `channel` is '').
local function ev_publish(command, channel, envelope)
  if channel ~= '' then redis.call(command, channel, envelope) end
end

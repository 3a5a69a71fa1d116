-- Takes over events pending for another consumer of a sink's group longer than min-idle ms (its
-- replica died while delivering them); counts those the cap trimmed meanwhile. Consumers with
-- nothing pending and idle longer than forget ms (replicas that stopped) are removed.
-- KEYS: stream. ARGV: group, consumer, min-idle ms, count, forget ms.
-- Returns { dropped, id1, event1, ... }.
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0', 'COUNT', ARGV[4])
local out = { #(r[3] or {}) }
entries_flatten(r[2], out, 0)
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['pending'] == 0 and info['idle'] > tonumber(ARGV[5]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
  end
end
return out

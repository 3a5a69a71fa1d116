-- A tenant's connections and users with one, or one user's connections, from the connection
-- counts (see connect.lua): O(1).
-- KEYS: the tenant's counts. ARGV: the user, or '' for the whole tenant.
-- Returns { connections, users }.
if ARGV[1] ~= '' then
  local n = tonumber(redis.call('HGET', KEYS[1], 'u|' .. ARGV[1]) or '0')
  if n > 0 then return { n, 1 } end
  return { 0, 0 }
end
local total = tonumber(redis.call('HGET', KEYS[1], '*') or '0')
local fields = redis.call('HLEN', KEYS[1])
if total > 0 then fields = fields - 1 end
return { total, fields }

-- Records one token revocation (PROTOCOL.md, "Revocations").
-- KEYS[1] the revocations (sorted set: member the revocation as JSON, score when it may be
-- forgotten, ms since the Unix epoch), KEYS[2] how many each tenant has (hash), KEYS[3] the
-- list's version (string).
-- ARGV[1] the revocation as JSON, ARGV[2] its tenant, ARGV[3] until (ms), ARGV[4] the most a
-- tenant may have, ARGV[5] a fresh version (unique).
-- Returns 1 when recorded (or already recorded: kept until the later time), 0 when the tenant
-- already has ARGV[4]. Errors (before any write) on arguments out of range.

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local keep = tonumber(ARGV[3])
local most = tonumber(ARGV[4])
-- At most 31 days ahead (the gateways' longest token lifetime is 30 days): also keeps scores
-- exact as doubles and PEXPIREAT's argument an integer.
if not keep or keep <= now or keep > now + 31 * 86400 * 1000 or not most or most < 1 then
  return redis.error_reply('ERR revocation until or limit out of range')
end

-- Forget expired ones first, by the server's clock (bounded work per call: the rest go on the
-- next call; a tenant's count may include some until then).
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 10000)
for _, member in ipairs(expired) do
  local ok, r = pcall(cjson.decode, member)
  if ok and type(r) == 'table' and type(r.tenant) == 'string' then
    if redis.call('HINCRBY', KEYS[2], r.tenant, -1) <= 0 then
      redis.call('HDEL', KEYS[2], r.tenant)
    end
  end
  redis.call('ZREM', KEYS[1], member)
end

local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
if known then
  if tonumber(known) >= keep then
    return 1
  end
  redis.call('ZADD', KEYS[1], keep, ARGV[1])
else
  if tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0') >= most then
    return 0
  end
  redis.call('ZADD', KEYS[1], keep, ARGV[1])
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
end
redis.call('SET', KEYS[3], ARGV[5])

-- Nothing outlives the last revocation.
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  for i = 1, 3 do
    redis.call('PEXPIREAT', KEYS[i], math.floor(tonumber(last[2])) + 1000)
  end
end
return 1

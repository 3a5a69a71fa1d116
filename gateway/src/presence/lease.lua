-- Renews a replica's lease until Redis' clock + ttl. Returns 1 if the replica was not
-- registered (first start, reaped as dead, or Redis lost its data), else 0.
-- KEYS: replicas (zset). ARGV: replica, ttl_ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])

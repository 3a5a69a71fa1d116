-- Creates a sink's consumer group at the stream's end (a new sink starts with new events) and
-- its read cursor at the current sequence number; nothing if the group exists.
-- KEYS: stream, sequence, cursors. ARGV: group.
local created = pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], ARGV[1], '$', 'MKSTREAM')
if created then
  redis.call('HSET', KEYS[3], ARGV[1], redis.call('GET', KEYS[2]) or '0')
  return 1
end
return 0

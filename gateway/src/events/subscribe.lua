-- Creates a sink's consumer group, with its read cursor; nothing if the group exists. A new sink
-- starts at the stream's end (ARGV[2] '$': new events only); a sink whose group vanished (Redis
-- lost its data) starts at its beginning ('0'), so what was appended since is delivered.
-- KEYS: stream, sequence, cursors. ARGV: group, '$' or '0'.
local created = pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], ARGV[1], ARGV[2], 'MKSTREAM')
if created then
  if ARGV[2] == '$' then
    redis.call('HSET', KEYS[3], ARGV[1], redis.call('GET', KEYS[2]) or '0')
  else
    -- From the start: whatever the stream holds is read, nothing counted as lost before it.
    redis.call('HDEL', KEYS[3], ARGV[1])
  end
  return 1
end
return 0

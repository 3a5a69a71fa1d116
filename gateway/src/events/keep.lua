-- Resets the idle time of events this consumer is still delivering (so no other replica claims
-- them); returns the ids the stream still has (the cap may have trimmed some).
-- KEYS: stream. ARGV: group, consumer, then the ids.
local args = { KEYS[1], ARGV[1], ARGV[2], 0 }
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
args[#args + 1] = 'JUSTID'
return redis.call('XCLAIM', unpack(args))

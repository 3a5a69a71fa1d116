-- Appends lifecycle events to the stream sink, each with the next sequence number (so a reader
-- sees what the cap trimmed before it read), trimming the stream to its cap.
-- KEYS: stream, sequence (both under the {events} hash tag). ARGV: cap, then the events (JSON).
for i = 2, #ARGV do
  local seq = redis.call('INCR', KEYS[2])
  local ok, event = pcall(cjson.decode, ARGV[i])
  local kind = ''
  if ok and type(event) == 'table' and type(event['type']) == 'string' then kind = event['type'] end
  redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'seq', seq, 'type', kind, 'event', ARGV[i])
end
return #ARGV - 1

-- A sink's group delivered these events. KEYS: stream. ARGV: group, then the ids.
return redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))

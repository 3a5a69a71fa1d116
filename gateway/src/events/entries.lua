-- Shared by read.lua and claim.lua: stream entries as { id, event JSON } pairs, appended to `out`,
-- with the highest sequence number seen.
local function entries_flatten(entries, out, last)
  for _, entry in ipairs(entries) do
    local fields, seq, event = entry[2], nil, ''
    for i = 1, #fields, 2 do
      if fields[i] == 'seq' then seq = tonumber(fields[i + 1]) elseif fields[i] == 'event' then event = fields[i + 1] end
    end
    out[#out + 1] = entry[1]
    out[#out + 1] = event
    if seq and seq > last then last = seq end
  end
  return last
end

-- Sets what one node holds of one agent (reconcile after a restart; `node forget`), moving every
-- level's outstanding by the difference.
-- KEYS[1] held hash; then per level: KEYS[i+1] outstanding.   ARGV: node, levels, amount
-- Returns what the node held before.
local node = ARGV[1]
local n = tonumber(ARGV[2])
local amount = tonumber(ARGV[3])
local held = tonumber(redis.call('HGET', KEYS[1], node) or '0')
local delta = amount - held
if amount <= 0 then redis.call('HDEL', KEYS[1], node)
else redis.call('HSET', KEYS[1], node, string.format('%.0f', amount)) end
if delta ~= 0 then
  for i = 1, n do
    local o = tonumber(redis.call('GET', KEYS[i + 1]) or '0') + delta
    if o <= 0 then redis.call('DEL', KEYS[i + 1]) else redis.call('SET', KEYS[i + 1], string.format('%.0f', o)) end
  end
end
return string.format('%.0f', held)

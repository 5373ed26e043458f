-- Settles part of one node's slice of one agent: charges what was spent, returns what it no
-- longer holds. Idempotent by request id.
-- KEYS[1] done marker   KEYS[2] held hash of the agent
-- then per level i (root first): KEYS[2i+1] spent hash, KEYS[2i+2] outstanding
-- ARGV: request id, node, levels, charge, release, day start, week start, month start
-- Returns what was released (a release above what the node holds is clamped).
local prev = redis.call('GET', KEYS[1])
if prev then return prev end
local node = ARGV[2]
local n = tonumber(ARGV[3])
local charge = tonumber(ARGV[4])
local release = tonumber(ARGV[5])
local starts = {ARGV[6], ARGV[7], ARGV[8]}
local held = tonumber(redis.call('HGET', KEYS[2], node) or '0')
local rel = release
if rel > held then rel = held end
if rel > 0 then
  local left = held - rel
  if left <= 0 then redis.call('HDEL', KEYS[2], node)
  else redis.call('HSET', KEYS[2], node, string.format('%.0f', left)) end
end
local names = {'d', 'w', 'm'}
for i = 1, n do
  local sk = KEYS[2 * i + 1]
  local ok = KEYS[2 * i + 2]
  if rel > 0 then
    local o = tonumber(redis.call('GET', ok) or '0') - rel
    if o <= 0 then redis.call('DEL', ok) else redis.call('SET', ok, string.format('%.0f', o)) end
  end
  if charge > 0 then
    local cs = string.format('%.0f', charge)
    for p = 1, 3 do
      local cur = redis.call('HGET', sk, names[p] .. 's')
      if cur and tonumber(cur) >= tonumber(starts[p]) then
        redis.call('HINCRBY', sk, names[p], cs)
      else
        redis.call('HSET', sk, names[p], cs, names[p] .. 's', starts[p])
      end
    end
    redis.call('HINCRBY', sk, 't', cs)
  end
end
local res = string.format('%.0f', rel)
redis.call('SET', KEYS[1], res, 'EX', 86400)
return res

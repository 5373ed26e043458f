-- Grants one node a slice of one agent's budget, atomically (one slot: every key shares the
-- agent tree's hash tag).
-- KEYS[1] last-grant hash of the agent (node -> "id answer")   KEYS[2] held hash of the agent
-- (node -> µUSD)
-- then per level i (root first): KEYS[3i] limits hash, KEYS[3i+1] spent hash, KEYS[3i+2] outstanding
-- ARGV: request id, node, levels, want, min, day start, week start, month start, now (unix s), divisor
-- Returns "granted level period limit spent outstanding reason" (reason 0 ok/limit, 1 paused,
-- 2 expired, 3 per-call); a retried request id returns what the first call returned. A node asks
-- for one agent's slices one at a time and retries a lost answer with the same id before it asks
-- anything new, so remembering the last answer per (node, agent) is enough: the store keeps one
-- field per pair, not a key per grant.
local node = ARGV[2]
local prev = redis.call('HGET', KEYS[1], node)
if prev then
  local sp = string.find(prev, ' ', 1, true)
  if sp and string.sub(prev, 1, sp - 1) == ARGV[1] then return string.sub(prev, sp + 1) end
end
local n = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local min = tonumber(ARGV[5])
local starts = {tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])}
local now = tonumber(ARGV[9])
local div = tonumber(ARGV[10])
local avail = -1
local bl, bp, blim, bspent, bout = -1, -1, 0, 0, 0
local reason = 0
for i = 1, n do
  local base = 3 * i
  local lim = redis.call('HMGET', KEYS[base], 'd', 'w', 'm', 't', 'pc', 'exp', 'paused')
  local sp = redis.call('HMGET', KEYS[base + 1], 'd', 'ds', 'w', 'ws', 'm', 'ms', 't')
  local out = tonumber(redis.call('GET', KEYS[base + 2]) or '0')
  if reason == 0 and lim[7] == '1' then reason = 1; bl = i - 1 end
  if reason == 0 and lim[6] and now >= tonumber(lim[6]) then reason = 2; bl = i - 1 end
  if reason == 0 and lim[5] and min > tonumber(lim[5]) then reason = 3; bl = i - 1 end
  for p = 1, 4 do
    if lim[p] then
      local limit = tonumber(lim[p])
      local spent = 0
      if p == 4 then
        spent = tonumber(sp[7] or '0')
      elseif sp[2 * p] and tonumber(sp[2 * p]) >= starts[p] then
        spent = tonumber(sp[2 * p - 1] or '0')
      end
      local left = limit - spent - out
      if left < 0 then left = 0 end
      if avail < 0 or left < avail then
        avail = left
        if reason == 0 then bl, bp, blim, bspent, bout = i - 1, p - 1, limit, spent, out end
      end
    end
  end
end
local g = 0
if reason == 0 then
  if avail < 0 then
    g = want
  elseif min <= avail then
    -- Slices shrink with what is left, shared among the nodes spending here, down to the
    -- request itself: the last dollars are reserved exactly.
    local holders = redis.call('HLEN', KEYS[2])
    if redis.call('HEXISTS', KEYS[2], node) == 0 then holders = holders + 1 end
    local cap = math.floor(avail / (div * holders))
    if cap < min then cap = min end
    g = want
    if g > cap then g = cap end
  end
end
if g > 0 then
  local gs = string.format('%.0f', g)
  redis.call('HINCRBY', KEYS[2], node, gs)
  for i = 1, n do redis.call('INCRBY', KEYS[3 * i + 2], gs) end
end
local res = string.format('%.0f %d %d %.0f %.0f %.0f %d', g, bl, bp, blim, bspent, bout, reason)
redis.call('HSET', KEYS[1], node, ARGV[1] .. ' ' .. res)
return res

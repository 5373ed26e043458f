-- Settles part of one node's slice of one agent: charges what was spent, returns what it no
-- longer holds. One call carries every outbox entry the node has for the agent, oldest first.
-- Idempotent by a watermark per (node, agent): the node sends an agent's entries in sequence
-- order and each call is atomic, so what the store has applied is always a prefix; a retry (or a
-- restart resending its outbox) applies only the entries above the watermark. One hash field per
-- pair, not a key per settle.
-- KEYS[1] watermark hash of the agent (node -> "epoch:seq")   KEYS[2] held hash of the agent
-- then per level i (root first): KEYS[2i+1] spent hash, KEYS[2i+2] outstanding
-- ARGV: node, levels, epoch (the node ledger's id: a re-created ledger counts from 1 again),
--       day start, week start, month start, then per entry: seq, charge, release
-- Returns what was released now (a release above what the node holds is clamped).
local node = ARGV[1]
local n = tonumber(ARGV[2])
local epoch = ARGV[3]
local starts = {ARGV[4], ARGV[5], ARGV[6]}
local last = -1
local wm = redis.call('HGET', KEYS[1], node)
if wm then
  local e, s = string.match(wm, '^(%d+):(%d+)$')
  if e == epoch then last = tonumber(s) end
end
local charge, release, top = 0, 0, last
for j = 7, #ARGV, 3 do
  local seq = tonumber(ARGV[j])
  if seq > last then
    charge = charge + tonumber(ARGV[j + 1])
    release = release + tonumber(ARGV[j + 2])
    if seq > top then top = seq end
  end
end
if top == last then return '0' end
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
redis.call('HSET', KEYS[1], node, epoch .. ':' .. string.format('%.0f', top))
return string.format('%.0f', rel)

"""The Lua script that runs proxy.store.limits on a Redis hash per key, atomically (one
EVALSHA per step). `admit`, `settle`, `seed` and `add_spend` below mirror the Python functions
of proxy.store.limits line by line (tests/shared/test_redis_limits.py runs both on the same
random operations and compares every field): change one, change the other.

Around them, what only this storage needs (as proxy.store.holdings is for the mmap file):
per-node holdings and their leases. A node's hold on a key (requests in flight, reserved
micro-USD) is two fields of the key's hash, `n:<node>` and `r:<node>`, and a lease, the node
scored by its expiry (ms) in the key's sorted set. `admit` first gives back the holdings of every
node whose lease expired (a dead node leaks nothing beyond the lease); live nodes renew theirs
(`renew`, which also sets the node's holdings to what it knows it holds: drift after a timed-out
reply, or a Redis that restarted empty, is corrected there).

Numbers: Lua's are doubles, exact below 2^53 (µs timestamps are ~2^51); every value written
goes through `%d`, never Lua's 14-digit default.
"""
from __future__ import annotations

import hashlib

# replies: admit -> {code index (0 admitted, see CODES in proxy.state.limits), remaining, wait, reserved}
LUA = r"""
local TAT, SEEN, INFLIGHT, DAY, SPENT, RESERVED, STAMP, LEFT = 2, 3, 4, 5, 6, 7, 8, 9
local NAMES = {'tat', 'seen', 'inflight', 'day', 'spent', 'reserved', 'stamp', 'left'}
local MINUTE_US, DAY_US = 60000000, 86400000000
local MINUTE, CONCURRENCY, DAILY, DAILY_SHORT, BALANCE, BALANCE_SHORT = 1, 2, 3, 4, 5, 6
local RECORD_TTL = 172800        -- s: a record without a static balance, unused this long, goes

local function idiv(a, b)        -- Python's a // b, exact below 2^53
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end

local function D(x) return string.format('%d', x) end

-- limits.admit
local function admit(f, now_us, minute_limit, max_concurrent, reserve, daily, stamp, balance)
  local day = idiv(now_us, DAY_US)
  if f[DAY] ~= day then
    f[DAY], f[SPENT] = day, 0
  end
  if stamp == 0 then
    f[STAMP] = 0
  elseif f[STAMP] == 0 or (0 < f[STAMP] and f[STAMP] < stamp) then
    f[STAMP], f[LEFT] = stamp, balance
  end
  f[SEEN] = idiv(now_us, 1000000)
  local remaining, wait, step = 0, 0, 0
  if minute_limit then
    step = math.max(1, idiv(MINUTE_US, minute_limit))
    local tat = f[TAT] > now_us and f[TAT] or now_us
    wait = tat + step - now_us
    if wait > MINUTE_US then
      return MINUTE, 0, wait - MINUTE_US
    end
    remaining = idiv(MINUTE_US - wait, step)
  end
  local code = 0
  if max_concurrent and f[INFLIGHT] >= max_concurrent then
    code = CONCURRENCY
  elseif daily and f[SPENT] >= daily then
    code = DAILY
  elseif daily and f[SPENT] + f[RESERVED] + reserve > daily then
    code = DAILY_SHORT
  elseif f[STAMP] ~= 0 and f[LEFT] <= 0 then
    code = BALANCE
  elseif f[STAMP] ~= 0 and f[LEFT] - f[RESERVED] - reserve < 0 then
    code = BALANCE_SHORT
  end
  if code ~= 0 then
    if minute_limit then return code, remaining + 1, wait - step end
    return code, 0, 0
  end
  if minute_limit then
    f[TAT] = now_us + wait
  end
  if max_concurrent then
    f[INFLIGHT] = f[INFLIGHT] + 1
  end
  f[RESERVED] = f[RESERVED] + reserve
  return 0, remaining, wait
end

-- limits.settle
local function settle(f, day, reserve, cost, concurrency)
  if concurrency and f[INFLIGHT] > 0 then
    f[INFLIGHT] = f[INFLIGHT] - 1
  end
  f[RESERVED] = math.max(0, f[RESERVED] - reserve)
  if f[DAY] < day then
    f[DAY], f[SPENT] = day, 0
  end
  if f[DAY] == day then
    f[SPENT] = f[SPENT] + cost
  end
  if f[STAMP] ~= 0 then
    f[LEFT] = f[LEFT] - cost
  end
end

-- limits.seed
local function seed(f, stamp, balance)
  if f[STAMP] ~= stamp then
    f[STAMP], f[LEFT] = stamp, balance
  end
end

-- limits.add_spend
local function add_spend(f, day, cost)
  if f[DAY] < day then
    f[DAY], f[SPENT] = day, 0
  end
  if f[DAY] == day then
    f[SPENT] = f[SPENT] + cost
  end
end

-- the storage: the record, holdings and leases ----------------------------------------------
local REC, LEASES = KEYS[1], KEYS[2]

local function load()
  local v = redis.call('HMGET', REC, unpack(NAMES))
  local f = {0}
  for i = 1, 8 do f[i + 1] = tonumber(v[i]) or 0 end
  return f
end

local function store(f)
  local args = {}
  for i = 1, 8 do
    args[2 * i - 1], args[2 * i] = NAMES[i], D(f[i + 1])
  end
  redis.call('HSET', REC, unpack(args))
  if f[STAMP] < 0 then      -- a static key's balance lives as long as Redis does
    redis.call('PERSIST', REC)
  else
    redis.call('EXPIRE', REC, RECORD_TTL)
  end
end

local function held(node)
  local v = redis.call('HMGET', REC, 'n:' .. node, 'r:' .. node)
  return tonumber(v[1]) or 0, tonumber(v[2]) or 0
end

local function set_held(node, n, r, expiry_ms)
  if n <= 0 and r <= 0 then
    redis.call('HDEL', REC, 'n:' .. node, 'r:' .. node)
    redis.call('ZREM', LEASES, node)
  else
    redis.call('HSET', REC, 'n:' .. node, D(n), 'r:' .. node, D(r))
    redis.call('ZADD', LEASES, D(expiry_ms), node)
    redis.call('EXPIRE', LEASES, RECORD_TTL)
  end
end

local function prune(f, now_ms)   -- give back what nodes whose lease expired held
  local dead = redis.call('ZRANGEBYSCORE', LEASES, '-inf', D(now_ms))
  for _, node in ipairs(dead) do
    local n, r = held(node)
    f[INFLIGHT] = math.max(0, f[INFLIGHT] - n)
    f[RESERVED] = math.max(0, f[RESERVED] - r)
    set_held(node, 0, 0, 0)
  end
end

local function opt(s) if s == '' then return nil end return tonumber(s) end

local op, node, lease_ms = ARGV[1], ARGV[3], tonumber(ARGV[4])
local now_us = opt(ARGV[2])
if not now_us then
  local t = redis.call('TIME')
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local now_ms = idiv(now_us, 1000)
local f = load()

if op == 'admit' then
  -- ARGV[5..10]: minute_limit, max_concurrent, reserve, daily, stamp, balance ('' = none)
  local max_concurrent, reserve = opt(ARGV[6]), tonumber(ARGV[7])
  prune(f, now_ms)
  local code, remaining, wait = admit(f, now_us, opt(ARGV[5]), max_concurrent, reserve, opt(ARGV[8]),
                                      tonumber(ARGV[9]), tonumber(ARGV[10]))
  store(f)
  if code == 0 and (max_concurrent or reserve > 0) then
    local n, r = held(node)
    set_held(node, n + (max_concurrent and 1 or 0), r + reserve, now_ms + lease_ms)
  end
  return {code, remaining, wait, f[RESERVED]}
elseif op == 'settle' then
  -- ARGV[5..8]: day, reserve, cost, concurrency (0/1); gives back at most what the node holds
  local reserve, concurrency = tonumber(ARGV[6]), ARGV[8] == '1'
  local n, r = held(node)
  local give = math.min(reserve, r)
  settle(f, tonumber(ARGV[5]), give, tonumber(ARGV[7]), concurrency and n > 0)
  store(f)
  if concurrency and n > 0 then n = n - 1 end
  set_held(node, n, r - give, now_ms + lease_ms)
  return 1
elseif op == 'renew' then
  -- ARGV[5..6]: what the node holds on this key (in flight, reserved)
  local n, r = tonumber(ARGV[5]), tonumber(ARGV[6])
  local hn, hr = held(node)
  f[INFLIGHT] = math.max(0, f[INFLIGHT] + n - hn)
  f[RESERVED] = math.max(0, f[RESERVED] + r - hr)
  store(f)
  set_held(node, n, r, now_ms + lease_ms)
  return 1
elseif op == 'seed' then
  -- ARGV[5..6]: stamp, balance; returns the stamp found
  local found = f[STAMP]
  seed(f, tonumber(ARGV[5]), tonumber(ARGV[6]))
  store(f)
  return found
elseif op == 'add_spend' then
  add_spend(f, tonumber(ARGV[5]), tonumber(ARGV[6]))
  store(f)
  return 1
elseif op == 'read' then
  return {f[TAT], f[SEEN], f[INFLIGHT], f[DAY], f[SPENT], f[RESERVED], f[STAMP], f[LEFT]}
end
return redis.error_reply('unknown op ' .. tostring(op))
"""

SHA = hashlib.sha1(LUA.encode()).hexdigest()

"""The Lua script behind :class:`spendguard.redis.RedisLedger`: every ledger operation is
one atomic ``EVALSHA`` of this script.

Keys of one account (all share the hash tag ``{account_id}``, so Redis Cluster keeps them
in one slot):

- ``state``, a hash: ``epoch`` (the Redis ``TIME`` at which this incarnation of the state
  was created), ``recover_until`` (admissions wait until then after the state was created,
  so that live processes re-announce the holds it lost), ``balance`` and ``balance_at``
  (the snapshot and when its lookup began), ``fetched_at`` (the same time while the
  snapshot may be trusted; removed to invalidate), ``spent`` (spending recorded since the
  lookup began), ``held`` (the sum of open holds), ``lookups`` (finished lookups),
  ``next_expiry`` (no later than the earliest hold expiry, so that an admission looks for
  expired holds only when one may be due), ``lock`` and ``lock_until`` (the token of the
  process looking the balance up, and when its turn ends), ``failure`` and
  ``failure_until`` (the error of the last failed lookup, as JSON, shared until then);
- ``holds``, a hash: hold id to amount;
- ``expiry``, a sorted set: hold id scored by the time it expires.

Amounts are integers in units of 10^-6 of the provider's unit, times are microseconds of
Redis ``TIME``. Lua numbers are doubles, exact for integers up to 2^53; the Python side
sends no amount above 10^15 + 1 units, so a decision's sums stay exact for anything a real
account sees (open holds beyond 2^53 units would be refused anyway), and ``end`` changes
``held`` and ``spent`` with ``HINCRBY`` (exact 64-bit integers in Redis). Every number
leaves Lua through ``string.format('%.0f')``, never through Lua's own 14-digit conversion.

``ARGV[1]`` packs the arguments, separated by the byte 0x1F (which no id, number or JSON
text contains): the operation, then, for operations that may create the account's state
(all but ``end``), the recovery window in µs, then the operation's own arguments.
Replies pack ``status, epoch, available, held, age, extra2, extra1`` the same way
(``extra1`` last: it may be a failure's JSON); ``available`` and ``age`` are '' when no
balance is known. ``beat`` renews the open holds of one process over any number of
accounts (three keys each) and answers, per account, whether its state had to be created
and which holds it re-created.
"""

from __future__ import annotations

import hashlib

SCRIPT = r"""
local A = {}
for part in string.gmatch(ARGV[1] .. '\31', '([^\31]*)\31') do
  A[#A + 1] = part
end
local op = A[1]

-- A hold ends: its amount leaves held; what it charged counts as spent. Needs no state.
if op == 'end' then
  -- hold id ('' for none), charged ('' for nothing)
  local state, holds, expiry = KEYS[1], KEYS[2], KEYS[3]
  local found = '0'
  if A[2] ~= '' then
    local amount = redis.call('HGET', holds, A[2])
    if amount then
      redis.call('HDEL', holds, A[2])
      redis.call('ZREM', expiry, A[2])
      if amount ~= '0' then  -- Redis reads '-0' as no integer
        redis.call('HINCRBY', state, 'held', '-' .. amount)
      end
      found = '1'
    end
  end
  if A[3] ~= '' then
    redis.call('HINCRBY', state, 'spent', A[3])
  end
  return table.concat({'ok', '', '', '', '', '', found}, '\31')
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local NEVER = '9000000000000000000'

local function text(n)
  return string.format('%.0f', n)
end

-- The hot path of an admission, decided from the first read alone: the state exists and
-- is not recovering, no hold is due, the snapshot is fresh, and the answer needs no
-- lookup. Anything else falls through to the general path below, which decides the
-- same way. (INFO commandstats, one run: a check's EVALSHA took 17.8 us of server time through
-- the general path, 12.6 us through this one; a no-op script takes 1.8 us.)
if op == 'admit' then
  local f = redis.call('HMGET', KEYS[1], 'recover_until', 'held', 'next_expiry', 'balance',
    'balance_at', 'fetched_at', 'spent')
  local fetched = tonumber(f[6])
  if fetched and (tonumber(f[1]) or 0) <= now and (tonumber(f[3]) or 0) > now
    and now - fetched <= tonumber(A[7]) then
    local amount, held = tonumber(A[3]), tonumber(f[2])
    local available = tonumber(f[4]) - tonumber(f[7]) - held - tonumber(A[4])
    local age = now - tonumber(f[5])
    local fits = available >= amount
    if fits or A[10] == '0' or age < tonumber(A[8]) then
      local hold_id = A[5]
      if fits and hold_id ~= '' and redis.call('HSETNX', KEYS[2], hold_id, A[3]) == 1 then
        local at = now + tonumber(A[6])
        redis.call('ZADD', KEYS[3], text(at), hold_id)
        if at < tonumber(f[3]) then
          redis.call('HSET', KEYS[1], 'held', text(held + amount), 'next_expiry', text(at))
        else
          redis.call('HSET', KEYS[1], 'held', text(held + amount))
        end
        held = held + amount
      end
      return table.concat({fits and 'ok' or 'short', '', text(available), text(held),
        text(age), '', 'cache'}, '\31')
    end
  end
end

local window = tonumber(A[2])

-- State missing: never created, or lost (restart without persistence, flush, eviction).
-- Redis cannot tell the two apart, so either way admissions wait for the recovery window,
-- in which every live process re-announces its open holds.
local function create(state, holds, expiry)
  redis.call('DEL', state, holds, expiry)
  redis.call('HSET', state, 'epoch', text(now), 'recover_until', text(now + window),
    'spent', '0', 'held', '0', 'lookups', '0', 'next_expiry', NEVER)
end

if op == 'beat' then
  -- per account: number of holds n, then n times (hold id, amount, ttl)
  local out = {}
  local a = 3
  for k = 1, #KEYS, 3 do
    local state, holds, expiry = KEYS[k], KEYS[k + 1], KEYS[k + 2]
    local n = tonumber(A[a])
    a = a + 1
    local created = '0'
    if redis.call('HEXISTS', state, 'epoch') == 0 then
      create(state, holds, expiry)
      created = '1'
    end
    -- Holds are re-announced only while the state recovers from a loss: outside that
    -- window a missing hold was ended (its beat raced its end) and must stay ended.
    local recovering = created == '1'
      or now < tonumber(redis.call('HGET', state, 'recover_until') or '0')
    local answer = {created}
    local added, first = 0, nil
    for _ = 1, n do
      local id, amount, at = A[a], A[a + 1], now + tonumber(A[a + 2])
      a = a + 3
      if recovering then
        if redis.call('HSETNX', holds, id, amount) == 1 then
          added = added + tonumber(amount)
          answer[#answer + 1] = id
          if not first or at < first then
            first = at
          end
        end
        redis.call('ZADD', expiry, text(at), id)
      else
        redis.call('ZADD', expiry, 'XX', text(at), id)
      end
    end
    if added > 0 then
      redis.call('HINCRBY', state, 'held', text(added))
      local next_expiry = tonumber(redis.call('HGET', state, 'next_expiry') or NEVER)
      if first < next_expiry then
        redis.call('HSET', state, 'next_expiry', text(first))
      end
    end
    out[#out + 1] = answer
  end
  return out
end

local state, holds, expiry = KEYS[1], KEYS[2], KEYS[3]

-- The state hash is read once; writes go to Redis and to this copy.
-- (Literal fields and one table constructor: a field list unpacked in a loop costs more
-- than the rest of an admission.)
local v = redis.call('HMGET', state, 'epoch', 'recover_until', 'held', 'next_expiry',
  'balance', 'balance_at', 'fetched_at', 'spent', 'lookups')
local cache = {epoch = v[1], recover_until = v[2], held = v[3], next_expiry = v[4],
  balance = v[5], balance_at = v[6], fetched_at = v[7], spent = v[8], lookups = v[9]}
if not cache['epoch'] then
  create(state, holds, expiry)
  cache = {epoch = text(now), recover_until = text(now + window), spent = '0', held = '0',
    lookups = '0', next_expiry = NEVER}
end
local epoch = cache['epoch']

local function num(field)
  local value = cache[field]
  if value then
    return tonumber(value)
  end
  return nil
end

local function put(...)
  redis.call('HSET', state, ...)
  local given = {...}
  for i = 1, #given, 2 do
    cache[given[i]] = given[i + 1]
  end
end

local function drop(field)
  redis.call('HDEL', state, field)
  cache[field] = false
end

-- Holds past their expiry are dropped. Their calls may have spent, so the snapshot is
-- no longer trusted: the next decision looks the balance up.
local held = num('held')
if (num('next_expiry') or 0) <= now then
  local due = redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, 256)
  for _, id in ipairs(due) do
    local amount = redis.call('HGET', holds, id)
    if amount then
      held = held - tonumber(amount)
      redis.call('HDEL', holds, id)
    end
    redis.call('ZREM', expiry, id)
  end
  local next_expiry = NEVER
  if #due == 256 then
    next_expiry = text(now)
  else
    local first = redis.call('ZRANGE', expiry, 0, 0, 'WITHSCORES')
    if first[2] then
      next_expiry = first[2]
    end
  end
  put('held', text(held), 'next_expiry', next_expiry)
  if #due > 0 then
    drop('fetched_at')
  end
end

local function add_hold(id, amount, ttl)
  if redis.call('HSETNX', holds, id, text(amount)) == 1 then
    local at = now + ttl
    redis.call('ZADD', expiry, text(at), id)
    held = held + amount
    if at < num('next_expiry') then
      put('held', text(held), 'next_expiry', text(at))
    else
      put('held', text(held))
    end
  end
end

local function answer(status, available, age, extra1, extra2)
  local a, g = '', ''
  if available then
    a = text(available)
    g = text(age)
  end
  return table.concat({status, epoch, a, text(held), g, extra2 or '', extra1 or ''}, '\31')
end

-- Whether the balance lookup lock is held, unexpired, by ``token``.
local function locked_by(token)
  local lock = redis.call('HMGET', state, 'lock', 'lock_until')
  return lock[1] == token and tonumber(lock[2]) > now
end

local recover_until = num('recover_until')
local recovering = recover_until and now < recover_until

local function paused()
  return table.concat({'recovering', epoch, '', text(held), '', '', text(recover_until - now)},
    '\31')
end

if op == 'admit' then
  -- amount, floor, hold id ('' to only check), hold ttl, ttl, refresh interval,
  -- max stale ('' for none), may look up ('1'/'0'), lock token, lock ms, lookups seen
  if recovering then
    return paused()
  end
  local amount, floor = tonumber(A[3]), tonumber(A[4])
  local hold_id, hold_ttl = A[5], tonumber(A[6])
  local ttl, refresh, max_stale = tonumber(A[7]), tonumber(A[8]), tonumber(A[9])
  local may_look_up, seen = A[10] == '1', tonumber(A[13])
  local balance, fetched = num('balance'), num('fetched_at')
  local available, age = nil, nil
  if balance then
    available = balance - num('spent') - held - floor
    age = now - num('balance_at')
  end
  local function decide(source)
    if available >= amount then
      if hold_id ~= '' then
        add_hold(hold_id, amount, hold_ttl)
      end
      return answer('ok', available, age, source)
    end
    return answer('short', available, age, source)
  end
  if may_look_up and balance and seen and seen ~= num('lookups') then
    -- Another process looked the balance up while this one waited: use its answer.
    return decide('remote')
  end
  if fetched and now - fetched <= ttl then
    if available >= amount or not may_look_up or age < refresh then
      return decide('cache')
    end
  elseif not may_look_up then
    if balance and max_stale and age <= max_stale then
      return decide('cache')
    end
    return answer('unknown', nil, nil)
  end
  local looking = redis.call('HMGET', state, 'failure', 'failure_until', 'lock', 'lock_until')
  if looking[1] and tonumber(looking[2]) > now then
    return answer('failed', available, age, looking[1])
  end
  if not looking[3] or tonumber(looking[4]) <= now then
    redis.call('HSET', state, 'lock', A[11], 'lock_until', text(now + tonumber(A[12]) * 1000))
    return answer('refresh', available, age, text(num('spent')), text(now))
  end
  if balance and max_stale and age <= max_stale then
    return decide('cache')
  end
  return answer('wait', available, age, text(num('lookups')))
end

if op == 'commit' then
  -- lock token, balance, spent when the lookup began, when it began, provider agrees
  -- ('1'/'0'), amount, floor, hold id, hold ttl, ttl
  local committed = locked_by(A[3])
  if committed then
    local started = A[6]
    put('balance', A[4], 'balance_at', started, 'fetched_at', started,
      'spent', text(num('spent') - tonumber(A[5])), 'lookups', text(num('lookups') + 1))
    redis.call('HDEL', state, 'lock', 'lock_until', 'failure', 'failure_until')
  end
  if recovering then
    return paused()
  end
  local fetched = num('fetched_at')
  if not committed and not (fetched and now - fetched <= tonumber(A[12])) then
    return answer('wait', nil, nil, text(num('lookups')))
  end
  local amount, floor, hold_id = tonumber(A[8]), tonumber(A[9]), A[10]
  local available = num('balance') - num('spent') - held - floor
  local age = now - num('balance_at')
  if available >= amount and (A[7] == '1' or not committed) then
    if hold_id ~= '' then
      add_hold(hold_id, amount, tonumber(A[11]))
    end
    return answer('ok', available, age, 'remote')
  end
  return answer('short', available, age, 'remote')
end

if op == 'fail' then
  -- lock token, failure record ('' for none), how long to share it (ms)
  if locked_by(A[3]) then
    redis.call('HDEL', state, 'lock', 'lock_until')
    if A[4] ~= '' then
      redis.call('HSET', state, 'failure', A[4], 'failure_until', text(now + tonumber(A[5]) * 1000))
    end
  end
  return answer('ok', nil, nil)
end

if op == 'hold' then
  -- amount, hold id, hold ttl
  local amount = tonumber(A[3])
  local balance = num('balance')
  local available, age = nil, nil
  if balance then
    available = balance - num('spent') - held
    age = now - num('balance_at')
  end
  add_hold(A[4], amount, tonumber(A[5]))
  return answer('ok', available, age)
end

if op == 'renew' then
  -- hold id, hold ttl
  local found = '0'
  if redis.call('HEXISTS', holds, A[3]) == 1 then
    redis.call('ZADD', expiry, 'XX', text(now + tonumber(A[4])), A[3])
    found = '1'
  end
  return answer('ok', nil, nil, found)
end

if op == 'invalidate' then
  drop('fetched_at')
  return answer('ok', nil, nil)
end

return redis.error_reply('spendguard: unknown ledger operation ' .. op)
"""

SHA = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()
"""The script's SHA-1, as ``EVALSHA`` wants it."""

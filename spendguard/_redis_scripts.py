"""The Lua script behind :class:`spendguard.redis.RedisLedger`: every ledger operation is
one atomic ``EVALSHA`` of this script.

Keys of one account (all share the hash tag ``{account_id}``, so Redis Cluster keeps them
in one slot):

- ``state``, a hash: ``epoch`` (names this incarnation of the state), ``created`` (its
  creation time), ``balance`` and ``balance_at`` (the snapshot and when its lookup began),
  ``fetched_at`` (the same time while the snapshot may be trusted; removed to invalidate),
  ``spent`` (spending recorded since the lookup began), ``held`` (the sum of open holds),
  ``lookups`` (finished lookups), ``recover_until`` (admissions pause until then after a
  loss of state);
- ``holds``, a hash: hold id to amount;
- ``expiry``, a sorted set: hold id scored by the time it expires;
- ``lock``, a string with a PX expiry: the token of the process looking the balance up;
- ``failure``, a string with a PX expiry: the error of the last failed lookup, as JSON.

Amounts are integers in units of 10^-9 of the provider's unit, times are microseconds of
Redis ``TIME``. Lua numbers are doubles, exact for integers up to 2^53; the Python side
keeps every amount below 9 * 10^15 units (9 million of the provider's unit), and every
number leaves Lua through ``string.format('%.0f')``, never through Lua's own 14-digit
conversion.

``ARGV``: operation, the epoch this process saw last ('' if none), a fresh epoch to use
if the state must be created, the pause after a loss (µs), then the operation's own
arguments. Every reply is ``{status, epoch, available, held, age, extra1, extra2}`` as
strings; ``available`` and ``age`` are '' when no balance is known.
"""

from __future__ import annotations

import hashlib

SCRIPT = """
local state, holds, expiry, lock, failure = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local op, known, fresh_epoch = ARGV[1], ARGV[2], ARGV[3]
local pause = tonumber(ARGV[4])

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

local function text(n)
  return string.format('%.0f', n)
end

-- The state hash is read once; writes go to Redis and to this copy.
local FIELDS = {'epoch', 'created', 'recover_until', 'held', 'balance', 'balance_at',
  'fetched_at', 'spent', 'lookups'}
local cache = {}
local values = redis.call('HMGET', state, unpack(FIELDS))
for i, field in ipairs(FIELDS) do
  cache[field] = values[i]
end

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

-- The state, created when missing. A process that saw an earlier epoch proves that
-- state was lost (restart without persistence, flush, eviction) with holds unknown:
-- admissions pause until every hold open before the loss must have expired.
local epoch = cache['epoch']
if not epoch then
  redis.call('DEL', holds, expiry, lock)
  epoch = fresh_epoch
  put('epoch', epoch, 'created', text(now), 'spent', '0', 'held', '0',
    'lookups', '0')
  if known ~= '' then
    put('recover_until', text(now + pause))
  end
elseif known ~= '' and known ~= epoch then
  local upto = num('created') + pause
  if upto > now and upto > (num('recover_until') or 0) then
    put('recover_until', text(upto))
  end
end

-- Holds past their expiry are dropped. Their calls may have spent, so the snapshot is
-- no longer trusted: the next decision looks the balance up.
local held = num('held')
local due = redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, 256)
if #due > 0 then
  for _, id in ipairs(due) do
    local amount = redis.call('HGET', holds, id)
    if amount then
      held = held - tonumber(amount)
      redis.call('HDEL', holds, id)
    end
    redis.call('ZREM', expiry, id)
  end
  put('held', text(held))
  drop('fetched_at')
end

local function add_hold(id, amount, ttl)
  if redis.call('HSETNX', holds, id, text(amount)) == 1 then
    redis.call('ZADD', expiry, text(now + ttl), id)
    held = held + amount
    put('held', text(held))
  end
end

local function answer(status, available, age, extra1, extra2)
  local a, g = '', ''
  if available then
    a = text(available)
    g = text(age)
  end
  return {status, epoch, a, text(held), g, extra1 or '', extra2 or ''}
end

local recover_until = num('recover_until')
local recovering = recover_until and now < recover_until

local function paused()
  return {'recovering', epoch, '', text(held), '', text(recover_until - now), ''}
end

if op == 'admit' then
  -- amount, floor, hold id ('' to only check), hold ttl, ttl, refresh interval,
  -- max stale ('' for none), may look up ('1'/'0'), lock token, lock ms, lookups seen
  if recovering then
    return paused()
  end
  local amount, floor = tonumber(ARGV[5]), tonumber(ARGV[6])
  local hold_id, hold_ttl = ARGV[7], tonumber(ARGV[8])
  local ttl, refresh, max_stale = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
  local may_look_up, seen = ARGV[12] == '1', tonumber(ARGV[15])
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
  local failed = redis.call('GET', failure)
  if failed then
    return answer('failed', available, age, failed)
  end
  if redis.call('SET', lock, ARGV[13], 'NX', 'PX', ARGV[14]) then
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
  local committed = redis.call('GET', lock) == ARGV[5]
  if committed then
    local started = ARGV[8]
    put('balance', ARGV[6], 'balance_at', started, 'fetched_at', started,
      'spent', text(num('spent') - tonumber(ARGV[7])), 'lookups', text(num('lookups') + 1))
    redis.call('DEL', lock, failure)
  end
  if recovering then
    return paused()
  end
  local fetched = num('fetched_at')
  if not committed and not (fetched and now - fetched <= tonumber(ARGV[14])) then
    return answer('wait', nil, nil, text(num('lookups')))
  end
  local amount, floor, hold_id = tonumber(ARGV[10]), tonumber(ARGV[11]), ARGV[12]
  local available = num('balance') - num('spent') - held - floor
  local age = now - num('balance_at')
  if available >= amount and (ARGV[9] == '1' or not committed) then
    if hold_id ~= '' then
      add_hold(hold_id, amount, tonumber(ARGV[13]))
    end
    return answer('ok', available, age, 'remote')
  end
  return answer('short', available, age, 'remote')
end

if op == 'fail' then
  -- lock token, failure record ('' for none), how long to share it (ms)
  if redis.call('GET', lock) == ARGV[5] then
    redis.call('DEL', lock)
    if ARGV[6] ~= '' then
      redis.call('SET', failure, ARGV[6], 'PX', ARGV[7])
    end
  end
  return answer('ok', nil, nil)
end

if op == 'hold' then
  -- amount, hold id, hold ttl, floor
  local amount, floor = tonumber(ARGV[5]), tonumber(ARGV[8])
  local balance = num('balance')
  local available, age = nil, nil
  if balance then
    available = balance - num('spent') - held - floor
    age = now - num('balance_at')
  end
  add_hold(ARGV[6], amount, tonumber(ARGV[7]))
  return answer('ok', available, age)
end

if op == 'end' then
  -- hold id ('' for none), charged ('' for nothing)
  local found = '0'
  if ARGV[5] ~= '' then
    local amount = redis.call('HGET', holds, ARGV[5])
    if amount then
      held = held - tonumber(amount)
      redis.call('HDEL', holds, ARGV[5])
      redis.call('ZREM', expiry, ARGV[5])
      put('held', text(held))
      found = '1'
    end
  end
  if ARGV[6] ~= '' then
    put('spent', text(num('spent') + tonumber(ARGV[6])))
  end
  return answer('ok', nil, nil, found)
end

if op == 'renew' then
  -- hold id, hold ttl
  local found = '0'
  if redis.call('HEXISTS', holds, ARGV[5]) == 1 then
    redis.call('ZADD', expiry, 'XX', text(now + tonumber(ARGV[6])), ARGV[5])
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

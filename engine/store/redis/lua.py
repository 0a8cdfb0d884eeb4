"""The Lua scripts of the Redis store: every check-then-write runs atomically inside Redis.

Records are hashes with one field per Operation field, each value JSON-encoded by
Python, so the scripts compare and copy values but never parse or build JSON (cjson
would mangle user data); only status, epoch and priority are compared, as their JSON
text (``"running"``, ``7``, ``"high"``). Fields starting with ``_`` are internal:
``_tx`` (the last write's token, so a write retried after a lost reply is not applied
twice), ``_ltx`` (the same for the last batch of log records) and ``_ctl`` (a pending cancel or pause).

The keys, under the namespace prefix P (``ARGV[1]``), are described in keys.py.

Fencing: every write of an attempt (checkpoint, live progress, log, transition, heartbeat) carries
the attempt's epoch and lease token (``HOLDER:EPOCH``) and is applied only while the operation is
still running under that epoch and its lease key still holds that token (``_FENCE``). A lease that
expired is renewed only by HEARTBEAT, and only while the record still shows that attempt (its epoch,
running) and no other lease is there, for a holder whose own clock says it has not run out (see
liveness.py); else the attempt is over, whether or not anyone noticed yet.
"""

from __future__ import annotations

from .codec import RECORD_FIELDS

_FENCE = r"""
-- nil while the attempt (epoch e, lease token tok) holds the operation; else {why, status, epoch}
local function fence(opk, leasek, e, tok)
  local f = redis.call('HMGET', opk, 'status', 'epoch')
  local why = nil
  if not f[1] then why = 'missing'
  elseif f[2] ~= e then why = 'epoch'
  elseif f[1] ~= '"running"' then why = 'status'
  elseif redis.call('GET', leasek) ~= tok then why = 'lease' end
  if why then return {why, f[1] or 'null', f[2] or 'null'} end
  return nil
end
"""

_MAY_PUBLISH = r"""
-- Before any write, where Redis can say (7.0+): a user whose ACL denies PUBLISH to the events channel
-- failed at the event, the script's last command, after its writes (Redis undoes none): a submit said
-- "failed" was stored, a claim marked running an operation nobody ran. Now nothing is written.
local function publish_denied(prefix)
  if redis.acl_check_cmd and not redis.acl_check_cmd('PUBLISH', prefix .. 'events', '') then
    return redis.error_reply('NOPERM this user may not PUBLISH to channel ' .. prefix .. 'events' ..
      ', where the store announces each change: grant it with ACL SETUSER <user> &' .. prefix .. '* +publish')
  end
  return nil
end
"""

_PRELUDE = (
    _FENCE
    + _MAY_PUBLISH
    + r"""
local P = ARGV[1]
local RANK = {['"high"'] = 0, ['"normal"'] = 1, ['"low"'] = 2}
local function bare(s) return string.sub(s, 2, -2) end
local function event(id, st, prev, epoch)
  redis.call('PUBLISH', P .. 'events', '{"kind":"status","op":"' .. id .. '","status":' .. st ..
    ',"previous":' .. (prev or 'null') .. ',"epoch":' .. (epoch or 'null') .. '}')
end
-- The queues are scored in Redis's clock, the one clock every process shares: a time the writer gives
-- (in its own clock, `now` its present) is moved by how far Redis's clock is from the writer's. Scored in
-- each writer's clock, one worker 10 minutes ahead of the others (or behind) took every retry at once
-- (its backoff over by its clock, or begun after its now: "the clock went back"), and moved them all into
-- the queue for every worker; and the work it queued waited 10 minutes of aging behind the rest.
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function at(x) return string.format('%.6f', x) end
-- A retry waits in dq until its not_before, and in dqf by when its backoff began (backoff_from, absent
-- in older records): a claim at a time before that (Redis's clock went back since) takes it at once, so a
-- backoff never waits longer than the policy chose (Operation.retry_due says the same).
local function enqueue(id, st, prio, queued_at, not_before, backoff_from, now)
  if st ~= '"queued"' then return end
  local r = RANK[prio] or 1
  local nb, bf, qa = tonumber(not_before), tonumber(backoff_from), tonumber(queued_at)
  local skew = clock() - now
  if nb and nb > now and not (bf and bf > now) then
    redis.call('ZADD', P .. 'dq:' .. r, at(nb + skew), id)
    if bf then redis.call('ZADD', P .. 'dqf:' .. r, at(bf + skew), id) end
  else
    redis.call('ZADD', P .. 'q:' .. r, qa and at(qa + skew) or 0, id)
  end
end
local function reindex(id, k, old, now)
  local f = redis.call('HMGET', k, 'status', 'priority', 'queued_at', 'not_before', 'created_at', 'backoff_from')
  local st = f[1]
  if old ~= st then
    if old then redis.call('ZREM', P .. 'st:' .. bare(old), id) end
    redis.call('ZADD', P .. 'st:' .. bare(st), tonumber(f[5]) and f[5] or 0, id)
  end
  if old == nil or old == '"queued"' then  -- only a queued operation is in a queue (enqueue below)
    for r = 0, 2 do
      redis.call('ZREM', P .. 'q:' .. r, id)
      redis.call('ZREM', P .. 'dq:' .. r, id)
      redis.call('ZREM', P .. 'dqf:' .. r, id)
    end
  end
  enqueue(id, st, f[2], f[3], f[4], f[6], now)
end
"""
)

CREATE = (
    _PRELUDE
    + r"""
-- KEYS[1] op key; ARGV: P, id, now, tx, the record packed (codec.pack: JSON \30 per field, in NAMES order),
-- the generation mark the caller saw ('': not checked).
-- One round trip per submit: the record, its index entries and its event. Returns the record's
-- handle (>= 1), or {'taken', id} when another operation has its idempotency key (nothing written),
-- or 0 when the id exists already (a retry of the same tx gets its handle again), or -1
-- when the mark is not the one the caller saw (Redis emptied since: it restores first, which moves the
-- handle counter past every handle given before). A record that brings a handle (restored from the
-- mirror) keeps it, unless another operation has it now, and the counter is moved past it; else the
-- next number is taken: never one used before.
local denied = publish_denied(P)
if denied then return denied end
local k = KEYS[1]
if redis.call('EXISTS', k) == 1 then
  if ARGV[4] ~= '' and redis.call('HGET', k, '_tx') == ARGV[4] then
    return tonumber(redis.call('HGET', k, 'handle')) or 1
  end
  return 0
end
if ARGV[6] and ARGV[6] ~= '' and redis.call('HGET', P .. 'meta', 'generation') ~= ARGV[6] then return -1 end
local NAMES = {NAMES_HERE}
local packed, pos, find, sub = ARGV[5], 1, string.find, string.sub
local kv, rec, n = {'_tx', ARGV[4]}, {}, 2
for i = 1, #NAMES do  -- found by plain search, not a pattern: a quarter of the splitting's time
  local e = find(packed, '\30', pos, true)
  if not e then return redis.error_reply('ERR a packed record with fewer fields than ' .. #NAMES) end
  local name, value = NAMES[i], sub(packed, pos, e - 1)
  pos = e + 1
  kv[n + 1] = name
  kv[n + 2] = value
  n = n + 2
  rec[name] = value
end
local ik = rec['idempotency_key']  -- its JSON text, quotes and all: the same for the same key
if ik and ik ~= 'null' then
  local have = redis.call('HGET', P .. 'idem', ik)
  if have and have ~= ARGV[2] and redis.call('EXISTS', P .. 'op:' .. have) == 1 then return {'taken', have} end
  redis.call('HSET', P .. 'idem', ik, ARGV[2])
end
local h = tonumber(rec['handle'])
if h then
  local other = redis.call('HGET', P .. 'handles', h)
  if other and other ~= ARGV[2] then h = nil end  -- never take a handle that names another operation
end
if h then
  if (tonumber(redis.call('HGET', P .. 'meta', 'handles')) or 0) < h then
    redis.call('HSET', P .. 'meta', 'handles', h)
  end
else
  h = redis.call('HINCRBY', P .. 'meta', 'handles', 1)
  kv[#kv + 1] = 'handle'
  kv[#kv + 1] = h
end
redis.call('HSET', k, unpack(kv))
redis.call('HSET', P .. 'handles', h, ARGV[2])
local id, st = ARGV[2], rec['status']
local created = tonumber(rec['created_at']) and rec['created_at'] or 0
redis.call('ZADD', P .. 'ids', 0, id)
redis.call('ZADD', P .. 'all', created, id)
redis.call('ZADD', P .. 'st:' .. bare(st), created, id)
enqueue(id, st, rec['priority'], rec['queued_at'], rec['not_before'], rec['backoff_from'], tonumber(ARGV[3]))
event(id, st, nil, rec['epoch'])
return h
"""
).replace("NAMES_HERE", ",".join(f"'{name}'" for name in RECORD_FIELDS))

WRITE = (
    _PRELUDE
    + r"""
-- transition / update. KEYS[1] op key, KEYS[2] lease key.
-- ARGV: P, id, now, epoch ('' any), allowed statuses ('' any; else "a","b"), tx,
--       lease token ('': not a write of the attempt, the epoch is only compared), field, value, ...
local denied = publish_denied(P)
if denied then return denied end
local k = KEYS[1]
local cur = redis.call('HMGET', k, 'status', 'epoch', '_tx')
if not cur[1] then return {'missing'} end
if ARGV[6] ~= '' and cur[3] == ARGV[6] then return {'done', redis.call('HGETALL', k)} end  -- applied before
-- A write that is not an attempt's (a resume, a cancel, an orphan interrupted) is remembered under its tx for
-- a while: run again after its reply was lost and another write since (a claim of what it resumed), it is
-- done, not refused. (An attempt's writes are too many to keep a key each; the record's _tx covers them.)
local wtx = P .. 'wtx:' .. ARGV[6]
if ARGV[7] == '' and ARGV[6] ~= '' and redis.call('EXISTS', wtx) == 1 then return {'done', redis.call('HGETALL', k)} end
if ARGV[7] ~= '' then
  local no = fence(k, KEYS[2], ARGV[4], ARGV[7])
  if no then return {'fenced', no[1], no[2], no[3]} end
end
if ARGV[4] ~= '' and cur[2] ~= ARGV[4] then return {'stale', cur[2]} end
if ARGV[5] ~= '' and not string.find(',' .. ARGV[5] .. ',', ',' .. cur[1] .. ',', 1, true) then
  return {'conflict', cur[1]}
end
local to, ifcancel, ifpause, ifctl = nil, nil, nil, nil
for i = 8, #ARGV, 2 do
  local name = ARGV[i]
  if name == 'status' then to = ARGV[i + 1] elseif name == '_ifcancel' then ifcancel = ARGV[i + 1]
  elseif name == '_ifpause' then ifpause = ARGV[i + 1] elseif name == '_ifctl' then ifctl = ARGV[i + 1] end
end
if to == '"interrupted"' and cur[1] == '"running"' and ARGV[7] == '' and redis.call('EXISTS', KEYS[2]) == 1 then
  return {'held', cur[1]}  -- only an operation whose holder's lease expired is interrupted by others
end
if ifctl then  -- the requests the caller chose by, as it read them (",pause,"; ",," none): another since refuses
  local ctl = redis.call('HGET', k, '_ctl') or ''
  if not string.find(ifctl, ',' .. ctl .. ',', 1, true) then return {'control', ctl} end
end
local sets = ARGV
local first = 8
if ifcancel or ifpause or ifctl then  -- pseudo-fields, never stored
  local instead = {}
  -- a settle that keeps the operation: a cancel asked meanwhile (_ctl) wins (_ifcancel); a pause asked
  -- meanwhile keeps a retry from running (_ifpause); each carries the status message
  local ctl = (ifcancel or ifpause) and cur[1] == '"running"' and redis.call('HGET', k, '_ctl')
  local became = nil
  if ifcancel and ctl == 'cancel' then became = '"cancelled"'
  elseif ifpause and ctl == 'pause' then became = '"paused"' end
  if became then
    instead = {status = became, status_message = became == '"cancelled"' and ifcancel or ifpause, not_before = 'null',
               backoff_from = 'null', finished_at = ARGV[3]}
    for j = 8, #ARGV, 2 do
      if ARGV[j] == 'finished_at' and ARGV[j + 1] ~= 'null' then instead.finished_at = nil end
    end
  end
  sets, first = {}, 1
  for j = 8, #ARGV, 2 do
    local name = ARGV[j]
    if name ~= '_ifcancel' and name ~= '_ifpause' and name ~= '_ifctl' then
      sets[#sets + 1] = name
      sets[#sets + 1] = instead[name] or ARGV[j + 1]
      instead[name] = nil
    end
  end
  for name, value in pairs(instead) do  -- what the settle did not send (a retry has no finish time)
    sets[#sets + 1] = name
    sets[#sets + 1] = value
  end
end
redis.call('HSET', k, '_tx', ARGV[6], unpack(sets, first))
local st = redis.call('HGET', k, 'status')
if st ~= '"queued"' and st ~= '"running"' then redis.call('HDEL', k, '_ctl') end
if ARGV[4] ~= '' and cur[1] == '"running"' and st ~= '"running"' then
  local lease = redis.call('GET', KEYS[2])  -- the attempt that settles lets go of its lease
  local suffix = ':' .. ARGV[4]
  if lease and string.sub(lease, -#suffix) == suffix then redis.call('DEL', KEYS[2]) end
end
reindex(ARGV[2], k, cur[1], tonumber(ARGV[3]))
if st ~= cur[1] then event(ARGV[2], st, cur[1], cur[2]) end
if ARGV[7] == '' and ARGV[6] ~= '' then redis.call('SET', wtx, 1, 'EX', 120) end
return {'ok', redis.call('HGETALL', k)}
"""
)

CLAIM = (
    _PRELUDE
    + r"""
-- ARGV: P, now, aging, worker JSON, lease ttl ms, tx, holder, op id ('' for the queue's next),
--       where this worker's deep look goes on in each queue ('D0,D1,D2'; see head below),
--       then the types this worker runs (their stored JSON form; none: any type)
-- Returns false, or {id claimed ('' for none), its record, where the deep looks go on next}.
local denied = publish_denied(P)
if denied then return denied end
local now = tonumber(ARGV[2])  -- the claimer's clock: the record's times (started_at) are in it
local again = redis.call('GET', P .. 'claimtx:' .. ARGV[6])
if again then return {again, redis.call('HGETALL', P .. 'op:' .. again)} end
local slots = redis.call('HGET', P .. 'meta', 'slots')  -- the store's slots, read as base.parse_slots does
slots = slots and string.match(slots, '^%d+$') and tonumber(slots)
if slots and slots >= 1 and slots <= 1000 and redis.call('ZCARD', P .. 'st:running') >= slots then
  return false  -- every store slot is in use: counted in this script, so claims never overrun it
end
local rnow = at(clock())  -- Redis's clock, which the queues are scored in (enqueue)
for r = 0, 2 do  -- retries whose backoff has passed, or began after now (the clock went back), join their queue
  local due = redis.call('ZRANGEBYSCORE', P .. 'dq:' .. r, '-inf', rnow, 'LIMIT', 0, 100)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'dqf:' .. r, '(' .. rnow, '+inf', 'LIMIT', 0, 100)) do
    due[#due + 1] = id
  end
  for _, id in ipairs(due) do
    local due_at = tonumber(redis.call('ZSCORE', P .. 'dq:' .. r, id))
    redis.call('ZREM', P .. 'dq:' .. r, id)
    redis.call('ZREM', P .. 'dqf:' .. r, id)
    local f = redis.call('HMGET', P .. 'op:' .. id, 'queued_at', 'not_before')
    local qa, nb = tonumber(f[1]), tonumber(f[2])
    if qa then  -- queued_at in Redis's clock: as far before its due time as in the writer's
      redis.call('ZADD', P .. 'q:' .. r, (due_at and nb) and at(due_at - nb + qa) or rnow, id)
    elseif redis.call('EXISTS', P .. 'op:' .. id) == 0 then
      redis.call('SADD', P .. 'gone', id)  -- its record evicted or deleted: find_orphans says so
    end
  end
end
local runs = nil
if #ARGV > 9 then
  runs = {}
  for i = 10, #ARGV do runs[ARGV[i]] = true end
end
local deep = {}
for d in string.gmatch(ARGV[9], '%d+') do deep[#deep + 1] = tonumber(d) end
local id, epoch = nil, nil
if ARGV[8] ~= '' then
  local f = redis.call('HMGET', P .. 'op:' .. ARGV[8], 'status', 'epoch')
  if f[1] == '"queued"' and tonumber(f[2]) then id, epoch = ARGV[8], tostring(tonumber(f[2]) + 1) end
else
  -- The first entry of queue r this worker can run: its id, its epoch to be, its score. Entries that no
  -- longer match their record are dropped; operations of other types are passed over, SCAN at a time.
  -- The first SCAN entries are looked at each time, in queue order; when none of them is of a type this
  -- worker runs, SCAN more, from where its last such look stopped (deep[r + 1]; the end of the queue
  -- starts it again). Else a worker without a plugin, behind more than SCAN queued operations of that
  -- plugin's type, never saw its own work below them: it sat idle beside it, and `worker --exit-when-idle`
  -- waited for it for ever.
  local SCAN = 1000
  local function scan(q, start, stop)  -- id, epoch, score, position; or nil and where to go on (nil: the end)
    local step = 4  -- the head is nearly always one this worker takes
    while start < stop do
      local h = redis.call('ZRANGE', q, start, start + step - 1, 'WITHSCORES')
      step = 100
      if not h[1] then return nil end
      local pos = start
      for i = 1, #h, 2 do
        local f = redis.call('HMGET', P .. 'op:' .. h[i], 'status', 'epoch', 'type')
        if f[1] == '"queued"' and tonumber(f[2]) then
          if not runs or runs[f[3]] then return h[i], tostring(tonumber(f[2]) + 1), tonumber(h[i + 1]), pos end
          pos = pos + 1
        else
          redis.call('ZREM', q, h[i])
          if not f[1] then redis.call('SADD', P .. 'gone', h[i]) end  -- no record: find_orphans says so
        end
      end
      start = pos
    end
    return nil, nil, nil, start
  end
  local function head(r)
    local q = P .. 'q:' .. r
    local cand, e, score, pos = scan(q, 0, SCAN)
    if cand or not pos then return cand, e, score end
    local from = math.max(SCAN, deep[r + 1] or 0)
    cand, e, score, pos = scan(q, from, from + SCAN)
    deep[r + 1] = pos or 0  -- found: its place (those before it are of other types); the end: from the top
    return cand, e, score
  end
  local aging, bestkey = tonumber(ARGV[3]), nil
  for r = 0, 2 do  -- the heads of the three queues; each level is worth `aging` seconds of waiting
    local cand, e, score = head(r)
    if cand then
      local key = score + r * aging
      if not id or key < bestkey or (key == bestkey and cand < id) then id, epoch, bestkey = cand, e, key end
    end
  end
end
local looked = (deep[1] or 0) .. ',' .. (deep[2] or 0) .. ',' .. (deep[3] or 0)
if not id then return {'', {}, looked} end
local k = P .. 'op:' .. id
redis.call('HSET', k, 'status', '"running"', 'epoch', epoch, 'worker', ARGV[4], 'started_at', ARGV[2],
  'finished_at', 'null', 'not_before', 'null', 'backoff_from', 'null', 'error', 'null', 'status_message', 'null',
  'updated_at', ARGV[2],
  '_tx', ARGV[6])
reindex(id, k, '"queued"', now)
redis.call('SET', P .. 'lease:' .. id, ARGV[7] .. ':' .. epoch, 'PX', ARGV[5])
redis.call('SET', P .. 'claimtx:' .. ARGV[6], id, 'EX', 120)
event(id, '"running"', '"queued"', epoch)
return {id, redis.call('HGETALL', k), looked}
"""
)

HEARTBEAT = (
    _FENCE
    + r"""
-- ARGV: P, lease ttl ms, holder, then per operation: id, epoch, mine (1: set the lease if it is gone)
-- Renews the leases this holder still holds; returns id, why, status, epoch of each it lost. A lease
-- gone (none there: no other holder) is set again when the holder says 'mine' and the record still
-- shows this attempt running (same epoch): nobody took the operation over, as that moves its epoch
-- or status first; its id is then returned with why 'set'.
local P = ARGV[1]
local lost = {}
for i = 4, #ARGV, 3 do
  local id, e, mine = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local leasek = P .. 'lease:' .. id
  local tok = ARGV[3] .. ':' .. e
  local no = fence(P .. 'op:' .. id, leasek, e, tok)
  if no and no[1] == 'lease' and mine == '1' and redis.call('EXISTS', leasek) == 0 then
    redis.call('SET', leasek, tok, 'PX', ARGV[2])
    for _, v in ipairs({id, 'set', no[2], no[3]}) do table.insert(lost, v) end
  elseif no then
    for _, v in ipairs({id, no[1], no[2], no[3]}) do table.insert(lost, v) end
  else
    redis.call('PEXPIRE', leasek, ARGV[2])
  end
end
return lost
"""
)

RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

SAVE_LIVE = (
    _FENCE
    + r"""
-- ARGV: P, now, holder, then per operation: id, epoch, n, field, value (n pairs)
-- Returns id, why, status, epoch of each operation whose attempt no longer holds it (not written).
local P = ARGV[1]
local refused = {}
local i = 4
while i <= #ARGV do
  local id, e, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local k = P .. 'op:' .. id
  local no = fence(k, P .. 'lease:' .. id, e, ARGV[3] .. ':' .. e)
  if no then
    for _, v in ipairs({id, no[1], no[2], no[3]}) do table.insert(refused, v) end
  elseif n > 0 then
    redis.call('HSET', k, 'updated_at', ARGV[2], unpack(ARGV, i + 3, i + 2 + 2 * n))
  end
  i = i + 3 + 2 * n
end
return refused
"""
)

SAVE_CHECKPOINT = (
    _FENCE
    + r"""
-- KEYS: op, ck, cp, cd, fail, lease.
-- ARGV: epoch, seq, info, payload, delta, keep, lease token, nfail, key, failure JSON, ..., and last
-- (only when a done key is not text) {"d": the done keys as listed in the failures}.
local no = fence(KEYS[1], KEYS[6], ARGV[1], ARGV[7])
if no then
  if no[1] == 'missing' then return {'missing'} end
  return {'fenced', no[1], no[2], no[3]}
end
local seq = ARGV[2]
redis.call('HSET', KEYS[2], seq, ARGV[3])
redis.call('HSET', KEYS[3], seq, ARGV[4])
redis.call('HSET', KEYS[4], seq, ARGV[5])
local nf = tonumber(ARGV[8])
if nf > 0 then redis.call('HSET', KEYS[5], unpack(ARGV, 9, 8 + 2 * nf)) end
if redis.call('EXISTS', KEYS[5]) == 1 then
  local done = cjson.decode(ARGV[9 + 2 * nf] or ARGV[5])['d']  -- strings: decoded only, never re-encoded
  if type(done) == 'table' then  -- an item that failed before and is done now is no longer a failure
    for j = 1, #done, 500 do redis.call('HDEL', KEYS[5], unpack(done, j, math.min(j + 499, #done))) end
  end
  redis.call('HSET', KEYS[1], 'item_failures', tostring(redis.call('HLEN', KEYS[5])))
end
local cutoff = tonumber(seq) - tonumber(ARGV[6])
for _, s in ipairs(redis.call('HKEYS', KEYS[2])) do
  if tonumber(s) <= cutoff then
    redis.call('HDEL', KEYS[2], s)
    redis.call('HDEL', KEYS[3], s)
  end
end
redis.call('HSET', KEYS[1], 'checkpoint_seq', seq)
return {'ok'}
"""
)

LOG = (
    _FENCE
    + r"""
-- KEYS: op, lease, log. ARGV: epoch ('': records not of an attempt, not fenced), lease token, maxlen, tx,
-- record, ... The log records of a running attempt, appended only while it holds the operation. Appended
-- once: the record's _ltx keeps the tx of the last batch appended, so a batch sent again after its reply
-- was lost (Redis ran it) is not appended twice; checked first, as the batch is done whatever happened since.
-- (A process writes an operation's batches one after another.)
if redis.call('HGET', KEYS[1], '_ltx') == ARGV[4] then return {'ok'} end
if ARGV[1] ~= '' then
  local no = fence(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
  if no then return {'fenced', no[1], no[2], no[3]} end
end
for i = 5, #ARGV do redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'r', ARGV[i]) end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], '_ltx', ARGV[4]) end
return {'ok'}
"""
)

DISCARD_AFTER = r"""
-- KEYS: op, ck, cp, cd, fail. ARGV: seq, then (only to set the failures listed) '1', key, failure JSON, ...
-- The items listed as failed become exactly the given ones (a listed one keeps its own entry).
local limit = tonumber(ARGV[1])
for i = 2, 4 do
  for _, s in ipairs(redis.call('HKEYS', KEYS[i])) do
    if tonumber(s) > limit then redis.call('HDEL', KEYS[i], s) end
  end
end
if ARGV[2] == '1' then
  local keep = {}
  for i = 3, #ARGV, 2 do keep[ARGV[i]] = ARGV[i + 1] end
  local had = redis.call('EXISTS', KEYS[5]) == 1
  for _, k in ipairs(redis.call('HKEYS', KEYS[5])) do
    if not keep[k] then redis.call('HDEL', KEYS[5], k) end
  end
  for k, v in pairs(keep) do redis.call('HSETNX', KEYS[5], k, v) end
  if (had or next(keep)) and redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('HSET', KEYS[1], 'item_failures', tostring(redis.call('HLEN', KEYS[5])))
  end
end
local newest = nil
for _, s in ipairs(redis.call('HKEYS', KEYS[2])) do
  local n = tonumber(s)
  if n and (not newest or n > newest) then newest = n end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'checkpoint_seq', newest and tostring(newest) or 'null')
end
return 1
"""

CONTROL = (
    _MAY_PUBLISH
    + r"""
-- KEYS: op. ARGV: P, id, action
local denied = publish_denied(ARGV[1])
if denied then return denied end
local f = redis.call('HMGET', KEYS[1], 'status', 'epoch')
-- Returns the request it holds after: the action, or the cancel a pause never replaces; 0: not running.
if f[1] ~= '"running"' then return 0 end
if ARGV[3] == 'pause' and redis.call('HGET', KEYS[1], '_ctl') == 'cancel' then return 'cancel' end  -- it stands
redis.call('HSET', KEYS[1], '_ctl', ARGV[3])
redis.call('PUBLISH', ARGV[1] .. 'events',
  '{"kind":"control","op":"' .. ARGV[2] .. '","action":"' .. ARGV[3] .. '","epoch":' .. f[2] .. '}')
return ARGV[3]
"""
)

DELETE = (
    _MAY_PUBLISH
    + r"""
-- KEYS: op, lease, ck, cp, cd, fail, log. ARGV: P, id, allowed statuses ("a","b"), tx.
-- Removes the operation and all it owns, only while its status is one of the allowed ones and no
-- attempt holds a lease on it; else {'conflict', status}; done, {'ok', the handle counter}. One
-- script: a resume or claim lands before it (and it refuses) or after it (and finds nothing).
-- A removal done is remembered under its tx for a while: run again after its reply was lost, it
-- answers as it did, not 'missing'.
local P = ARGV[1]
local denied = publish_denied(P)
if denied then return denied end
local st = redis.call('HGET', KEYS[1], 'status')
if not st then
  local done = ARGV[4] and redis.call('GET', P .. 'deltx:' .. ARGV[4])
  if done then return {'ok', done} end
  return {'missing'}
end
if not string.find(',' .. ARGV[3] .. ',', ',' .. st .. ',', 1, true) or redis.call('EXISTS', KEYS[2]) == 1 then
  return {'conflict', st}
end
local h = redis.call('HGET', KEYS[1], 'handle')
local ik = redis.call('HGET', KEYS[1], 'idempotency_key')
redis.call('DEL', unpack(KEYS))
local id = ARGV[2]
if tonumber(h) then redis.call('HDEL', P .. 'handles', h) end
if ik and ik ~= 'null' and redis.call('HGET', P .. 'idem', ik) == id then redis.call('HDEL', P .. 'idem', ik) end
redis.call('ZREM', P .. 'ids', id)
redis.call('ZREM', P .. 'all', id)
redis.call('ZREM', P .. 'st:' .. string.sub(st, 2, -2), id)
for r = 0, 2 do
  redis.call('ZREM', P .. 'q:' .. r, id)
  redis.call('ZREM', P .. 'dq:' .. r, id)
  redis.call('ZREM', P .. 'dqf:' .. r, id)
end
redis.call('PUBLISH', P .. 'events', '{"kind":"deleted","op":"' .. id .. '","previous":' .. st .. '}')
local counter = redis.call('HGET', P .. 'meta', 'handles') or ''  -- past every handle given: the mirror keeps it
if ARGV[4] then redis.call('SET', P .. 'deltx:' .. ARGV[4], counter, 'EX', 120) end
return {'ok', counter}
"""
)

FORGET = r"""
-- ARGV: P, id, then every status name. An id the indexes hold whose record is gone (evicted by a
-- maxmemory policy, or deleted by hand): taken out of every index, so that it holds no store slot
-- (st:running is what CLAIM counts) and no listing counts it. 1 if taken out, 0 if the record exists.
local P, id = ARGV[1], ARGV[2]
if redis.call('EXISTS', P .. 'op:' .. id) == 1 then return 0 end
for i = 3, #ARGV do redis.call('ZREM', P .. 'st:' .. ARGV[i], id) end
redis.call('ZREM', P .. 'all', id)
redis.call('ZREM', P .. 'ids', id)
for r = 0, 2 do
  redis.call('ZREM', P .. 'q:' .. r, id)
  redis.call('ZREM', P .. 'dq:' .. r, id)
  redis.call('ZREM', P .. 'dqf:' .. r, id)
end
return 1
"""

REQUEUE = (
    _PRELUDE
    + r"""
-- ARGV: P, now (the caller's clock). Queued operations that no queue holds (a queue key evicted by a
-- maxmemory policy, or deleted by hand) would wait for ever, listed queued: each is queued again as its
-- record says. An id listed queued whose record is gone is noted for find_orphans (gone); one whose record
-- has another status is indexed under that one. Run only when the counts disagree. The number put back.
local now, n = tonumber(ARGV[2]), 0
for _, id in ipairs(redis.call('ZRANGE', P .. 'st:queued', 0, -1)) do
  local held = false
  for r = 0, 2 do
    if redis.call('ZSCORE', P .. 'q:' .. r, id) or redis.call('ZSCORE', P .. 'dq:' .. r, id) then held = true end
  end
  if not held then
    local k = P .. 'op:' .. id
    local f = redis.call('HMGET', k, 'status', 'priority', 'queued_at', 'not_before', 'backoff_from')
    if f[1] == '"queued"' then
      enqueue(id, f[1], f[2], f[3], f[4], f[5], now)
      n = n + 1
    elseif not f[1] then
      redis.call('SADD', P .. 'gone', id)
    else
      reindex(id, k, '"queued"', now)
    end
  end
end
return n
"""
)

REINDEX = r"""
-- ARGV: P, then every status name. The indexes of every operation (ids, all, st:STATUS) as its record says,
-- when their counts disagree (an index key evicted by a maxmemory policy, or deleted by hand): a record
-- whose index keys went was listed nowhere, and `show ID` said no operation matches it, though Redis held
-- it (a completed one too). Only the ids some index or queue still holds are found (no SCAN of the keyspace). An id
-- whose record is gone is noted for find_orphans (gone); one whose status is no known one is left as it is.
-- The number of operations indexed again.
local P = ARGV[1]
local known, seen, n = {}, {}, 0
for i = 2, #ARGV do known[ARGV[i]] = true end
local function look(key)
  for _, id in ipairs(redis.call('ZRANGE', key, 0, -1)) do seen[id] = true end
end
look(P .. 'all')
look(P .. 'ids')
for i = 2, #ARGV do look(P .. 'st:' .. ARGV[i]) end
for r = 0, 2 do look(P .. 'q:' .. r) look(P .. 'dq:' .. r) end
for id in pairs(seen) do
  local f = redis.call('HMGET', P .. 'op:' .. id, 'status', 'created_at')
  if not f[1] then
    redis.call('SADD', P .. 'gone', id)
  else
    local st = string.sub(f[1], 2, -2)
    local created = tonumber(f[2]) or 0
    local added = redis.call('ZADD', P .. 'ids', 'NX', 0, id) + redis.call('ZADD', P .. 'all', 'NX', created, id)
    if known[st] then
      for i = 2, #ARGV do
        if ARGV[i] ~= st then added = added + redis.call('ZREM', P .. 'st:' .. ARGV[i], id) end
      end
      added = added + redis.call('ZADD', P .. 'st:' .. st, 'NX', created, id)
    end
    if added > 0 then n = n + 1 end
  end
end
return n
"""

//! The Lua scripts of [`RedisStore`](super::RedisStore). Each runs atomically on the
//! server: a conditional write checks the stored row version and writes the record and its
//! index entries in one step; a read returns a consistent page in one round trip.
//!
//! Replies of the write scripts: `1` means the record was written (with the row version the
//! caller passed) or deleted; `-1` means the record exists (a create lost); `-2` means the
//! row version did not match (an update or a conditional delete lost); `-4` means a secret
//! write's key condition did not hold; `0` (deletes only) means there was nothing to
//! delete. Row versions are compared as the decimal strings
//! they are stored as, never as Lua numbers (which are exact only below 2^53).
//!
//! Every key a script touches shares the store's `{prefix}` hash tag, so all of them live
//! in one hash slot.

/// Writes a secret record. KEYS: record hash, secrets index, the hash of the data key it
/// was sealed under. ARGV: mode (`c` create, `u` update, `s` upsert), expected row version,
/// index member, kind, DEK version, envelope, created at, updated at, new row version, `k`
/// when the key condition applies (`''` for none), the sealing key's wrapped bytes.
///
/// The key condition: the data key is active (`st` 1) and holds exactly those wrapped
/// bytes; otherwise `-4` and nothing is written. An existing record is rewritten by one
/// `HSET`, which keeps its creation time.
pub(super) const PUT_SECRET: &str = r"
if ARGV[10] == 'k' then
  local key = redis.call('HMGET', KEYS[3], 'st', 'w')
  if key[1] ~= '1' or key[2] ~= ARGV[11] then return -4 end
end
local cur = redis.call('HGET', KEYS[1], 'r')
local mode = ARGV[1]
if cur then
  if mode == 'c' then return -1 end
  if mode == 'u' and cur ~= ARGV[2] then return -2 end
  redis.call('HSET', KEYS[1], 'k', ARGV[4], 'v', ARGV[5], 'e', ARGV[6], 'u', ARGV[8], 'r', ARGV[9])
  return 1
end
if mode == 'u' then return -2 end
redis.call('HSET', KEYS[1], 'k', ARGV[4], 'v', ARGV[5], 'e', ARGV[6], 'c', ARGV[7], 'u', ARGV[8], 'r', ARGV[9])
redis.call('ZADD', KEYS[2], 0, ARGV[3])
return 1
";

/// Deletes a secret record. KEYS: record hash, secrets index. ARGV: expected row version
/// (empty for none), index member.
pub(super) const DELETE_SECRET: &str = r"
local cur = redis.call('HGET', KEYS[1], 'r')
if not cur then return 0 end
if ARGV[1] ~= '' and cur ~= ARGV[1] then return -2 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
";

/// Writes a data-key record. KEYS: record hash, data-key index, tenant index. ARGV: mode,
/// expected row version, index member, tenant, state, suite, master key id, wrapped key,
/// encryptions reserved, created at, updated at, new row version. An existing record is
/// rewritten as in `PUT_SECRET`.
pub(super) const PUT_DEK: &str = r"
local cur = redis.call('HGET', KEYS[1], 'r')
local mode = ARGV[1]
if cur then
  if mode == 'c' then return -1 end
  if mode == 'u' and cur ~= ARGV[2] then return -2 end
  redis.call('HSET', KEYS[1], 'st', ARGV[5], 'su', ARGV[6], 'm', ARGV[7], 'w', ARGV[8], 'n', ARGV[9], 'u', ARGV[11], 'r', ARGV[12])
  return 1
end
if mode == 'u' then return -2 end
redis.call('HSET', KEYS[1], 'st', ARGV[5], 'su', ARGV[6], 'm', ARGV[7], 'w', ARGV[8], 'n', ARGV[9], 'c', ARGV[10], 'u', ARGV[11], 'r', ARGV[12])
redis.call('ZADD', KEYS[2], 0, ARGV[3])
redis.call('ZADD', KEYS[3], 0, ARGV[4])
return 1
";

/// Deletes a data-key record, and the tenant from the tenant index when it was the
/// tenant's last one. KEYS: record hash, data-key index, tenant index. ARGV: expected row
/// version (empty for none), index member, tenant, the tenant's index range (low, high).
pub(super) const DELETE_DEK: &str = r"
local cur = redis.call('HGET', KEYS[1], 'r')
if not cur then return 0 end
if ARGV[1] ~= '' and cur ~= ARGV[1] then return -2 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
if #redis.call('ZRANGEBYLEX', KEYS[2], ARGV[4], ARGV[5], 'LIMIT', 0, 1) == 0 then
  redis.call('ZREM', KEYS[3], ARGV[3])
end
return 1
";

/// Reads a page of records through an index, in index (byte) order. KEYS: the index.
/// ARGV: low and high range bounds (`ZRANGEBYLEX` syntax), the most records to return,
/// the record-key prefix, the record shape (`meta`, `whole` or `dek`), the longest
/// envelope or wrapped key to return, a DEK version to skip (`''` for none), the most index
/// entries to examine, and a byte budget: the page ends (not exhausted) once the envelopes
/// and wrapped keys in it reach it, so one reply stays small even for large secrets.
///
/// Reply: `{last, exhausted, records}`, where `last` is the last index entry examined (or
/// `false`), `exhausted` is 1 when the range has no entries after `last`, and each record is
/// `{member, field...}`. A field longer than the bound is replaced by the integer `0`.
pub(super) const READ_PAGE: &str = r"
local examine = tonumber(ARGV[8])
local want = tonumber(ARGV[3])
local bound = tonumber(ARGV[6])
local shape = ARGV[5]
local skip = ARGV[7]
-- A record exists when any of its fields does; one with a field missing is returned (and
-- refused as malformed by the client) rather than skipped.
local function present(f, n)
  for i = 1, n do
    if f[i] then return true end
  end
  return false
end
local budget = tonumber(ARGV[9])
local members = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, examine)
local out = {}
local last = false
local examined = 0
local bytes = 0
for _, m in ipairs(members) do
  if #out >= want or bytes >= budget then break end
  last = m
  examined = examined + 1
  local sep = string.find(m, '\0', 1, true)
  if sep then
    local key = ARGV[4] .. string.sub(m, 1, sep - 1) .. ':' .. string.sub(m, sep + 1)
    if shape == 'dek' then
      local f = redis.call('HMGET', key, 'st', 'su', 'm', 'n', 'c', 'u', 'r')
      if present(f, 7) then
        local w = 0
        if redis.call('HSTRLEN', key, 'w') <= bound then
          w = redis.call('HGET', key, 'w')
          bytes = bytes + #w
        end
        out[#out + 1] = {m, f[1], f[2], f[3], w, f[4], f[5], f[6], f[7]}
      end
    else
      local f = redis.call('HMGET', key, 'k', 'v', 'c', 'u', 'r')
      if present(f, 5) and (skip == '' or f[2] ~= skip) then
        if shape == 'whole' then
          local e = 0
          if redis.call('HSTRLEN', key, 'e') <= bound then
            e = redis.call('HGET', key, 'e')
            bytes = bytes + #e
          end
          out[#out + 1] = {m, f[1], f[2], f[3], f[4], f[5], e}
        else
          out[#out + 1] = {m, f[1], f[2], f[3], f[4], f[5]}
        end
      end
    end
  end
end
local exhausted = 0
if examined == #members and #members < examine then exhausted = 1 end
return {last, exhausted, out}
";

/// Reads one record by its key: the fast path of `get_secret` and `get_dek`. KEYS: the
/// record hash. ARGV: the record shape (`whole` or `dek`), the longest envelope or wrapped
/// key to return, the record's index member (echoed first, as in `READ_PAGE`).
///
/// Reply: `false` when no field of the record exists; otherwise the record in the layout of
/// `READ_PAGE`, with a field longer than the bound replaced by the integer `0`.
pub(super) const READ_ONE: &str = r"
local key = KEYS[1]
local bound = tonumber(ARGV[2])
local f
local n
if ARGV[1] == 'dek' then
  if redis.call('HSTRLEN', key, 'w') > bound then
    f = redis.call('HMGET', key, 'st', 'su', 'm', 'n', 'c', 'u', 'r')
    f[8] = 0
  else
    f = redis.call('HMGET', key, 'st', 'su', 'm', 'n', 'c', 'u', 'r', 'w')
  end
  n = 7
else
  if redis.call('HSTRLEN', key, 'e') > bound then
    f = redis.call('HMGET', key, 'k', 'v', 'c', 'u', 'r')
    f[6] = 0
  else
    f = redis.call('HMGET', key, 'k', 'v', 'c', 'u', 'r', 'e')
  end
  n = 5
end
local any = false
for i = 1, n do
  if f[i] then any = true end
end
if not any then return false end
if ARGV[1] == 'dek' then
  return {ARGV[3], f[1], f[2], f[3], f[8], f[4], f[5], f[6], f[7]}
end
return {ARGV[3], f[1], f[2], f[3], f[4], f[5], f[6]}
";

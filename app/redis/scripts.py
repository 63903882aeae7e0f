"""The Lua scripts Tessera runs in Redis: the rate limiter's counting
(app/services/rate_limiter.py) and the cache's lookups and invalidations
(app/services/cache.py), in one place because the cached read runs both in one script.

Every key a script touches carries the tenant's `{slug}` hash tag, so each script runs on one
Redis Cluster slot.
"""

from __future__ import annotations

# Fixed windows that start at a tenant's first request (limits' FixedWindowRateLimiter
# semantics), every window of the tenant checked and counted atomically. A rejected request
# counts against nothing, so a tenant hammering a short window does not burn its long one.
# Returns {blocked, count_1, pttl_1, count_2, pttl_2, ...}: the window arithmetic needs
# nothing more, so there is no second "stats" call. A Lua function, so that the cached read
# (COUNT_AND_LOOKUP) can count the request and look up its entry in one script.
# keys: the window counters; args: their amounts, then their lengths in ms.
COUNT_REQUEST_FUNCTION = """
local function count_request(keys, args)
  local n = #keys
  local counts = {}
  local blocked = 0
  for i = 1, n do
    local count = tonumber(redis.call('GET', keys[i]) or '0')
    counts[i] = count
    if count + 1 > tonumber(args[i]) then blocked = 1 end
  end
  local out = {blocked}
  for i = 1, n do
    local count = counts[i]
    local window = tonumber(args[n + i])
    if blocked == 0 then
      count = redis.call('INCR', keys[i])
      if count == 1 then redis.call('PEXPIRE', keys[i], window) end
    end
    local ttl = redis.call('PTTL', keys[i])
    if ttl == -1 then
      redis.call('PEXPIRE', keys[i], window)
      ttl = window
    elseif ttl == -2 then
      ttl = window
    end
    out[#out + 1] = count
    out[#out + 1] = ttl
  end
  return out
end
"""

COUNT_REQUEST = COUNT_REQUEST_FUNCTION + "return count_request(KEYS, ARGV)\n"


# One round trip for a lookup: read the generation and the version (the collection's for a
# page, the resource's otherwise), build the entry key, read the entry. The key and what was
# seen come back so that a miss is stored only under those (see STORE_IF_CURRENT). Entry keys are
# built inside the script, which Redis Cluster accepts because they share the tenant's hash
# tag (slot). A Lua function, so that one script can also count the request (COUNT_AND_LOOKUP).
LOOKUP_FUNCTION = """
local function lookup(generation_key, version_key, prefix, what, tail)
  local generation = redis.call('GET', generation_key) or '0'
  local version = redis.call('GET', version_key) or '0'
  local key = prefix .. generation .. ':' .. what .. '@' .. version .. tail
  return {key, redis.call('GET', key), generation, version}
end
"""
# KEYS: generation, version. ARGV: prefix, "<collection>" or "<collection>:<id>", tail.
LOOKUP = LOOKUP_FUNCTION + "return lookup(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])\n"

# A cached read's only round trip when its entry is there: count the request against the
# tenant's rate limit, and look the entry up unless the request was refused. The rate-limit
# keys carry the same hash tag, so this works on Redis Cluster too.
# KEYS: the n window counters, then generation and version (absent: count only).
# ARGV: n, the n amounts, the n window lengths in ms, then the lookup's three arguments.
COUNT_AND_LOOKUP = (
    COUNT_REQUEST_FUNCTION
    + LOOKUP_FUNCTION
    + """
local n = tonumber(ARGV[1])
local keys, args = {}, {}
for i = 1, n do keys[i] = KEYS[i] end
for i = 1, 2 * n do args[i] = ARGV[1 + i] end
local counted = count_request(keys, args)
if counted[1] == 1 or #KEYS == n then return {counted} end
local a = 2 * n + 1
return {counted, lookup(KEYS[n + 1], KEYS[n + 2], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3])}
"""
)

# Store a loaded response only if nothing was invalidated since its lookup.
# KEYS: generation, version, entry. ARGV: generation seen, version seen, value, TTL in ms.
STORE_IF_CURRENT = """
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then return 0 end
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
return 1
"""

# One round trip for a write: a fresh version for every resource and collection it touched.
# KEYS: version keys. ARGV: the new version, its TTL in ms.
INVALIDATE = """
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
end
return #KEYS
"""

# Tenants' request counts, flushed from each process's tally once a second
# (app/services/request_usage.py): one hash per tenant, fields `m:<5-minute bucket>:<class>`
# (the last hour), `h:<hour bucket>:<class>` (the last day) and `last` (its latest request,
# Unix seconds). Buckets older than the ones kept go once the hash has grown past 160 fields.
# KEYS: the tenants' usage hashes (one on a Cluster: each tenant has a slot of its own).
# ARGV: 5-minute bucket, hour bucket, oldest 5-minute and hour buckets kept, TTL in s; then
# for each key in turn: its latest request time, n, and n (status class, count) pairs.
RECORD_REQUESTS = """
local oldest = {m = tonumber(ARGV[3]), h = tonumber(ARGV[4])}
local at = 6
for k = 1, #KEYS do
  local key = KEYS[k]
  local latest, n = ARGV[at], tonumber(ARGV[at + 1])
  for i = at + 2, at + 2 * n, 2 do
    redis.call('HINCRBY', key, 'm:' .. ARGV[1] .. ':' .. ARGV[i], ARGV[i + 1])
    redis.call('HINCRBY', key, 'h:' .. ARGV[2] .. ':' .. ARGV[i], ARGV[i + 1])
  end
  at = at + 2 + 2 * n
  if tonumber(latest) > tonumber(redis.call('HGET', key, 'last') or '0') then
    redis.call('HSET', key, 'last', latest)
  end
  if redis.call('HLEN', key) > 160 then
    for _, field in ipairs(redis.call('HKEYS', key)) do
      local kind, bucket = string.match(field, '^(%a):(%d+):')
      if kind and tonumber(bucket) < oldest[kind] then redis.call('HDEL', key, field) end
    end
  end
  redis.call('EXPIRE', key, ARGV[5])
end
return #KEYS
"""

# A tenant's request counts as RECORD_REQUESTS keeps them. KEYS: the tenant's usage hash.
READ_REQUESTS = "return redis.call('HGETALL', KEYS[1])\n"

# A deleted tenant's request counts go with it. KEYS: the tenant's usage hash.
FORGET_REQUESTS = "return redis.call('DEL', KEYS[1])\n"

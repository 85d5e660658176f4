-- wrk script: POST provider callbacks, unique bodies, count what was acknowledged.
--
--   wrk -t T -c C -d D -s callbacks.lua http://127.0.0.1:PORT -- DATA THREADS SEQ_BASE LIMIT
--
-- DATA is a file written by bench/load.py. Its first line is the mode:
--   "template": lines "PATH<TAB>BODY_PREFIX"; each request appends a unique sequence number
--               and "}" to the prefix (OKdokument sendInfo: the dedupe key is the body per
--               token, so every body differs). Consecutive requests go to different paths.
--   "pool":     lines "PATH<TAB>X-Firma-Signature<TAB>X-Firma-Event<TAB>BODY", precomputed
--               and HMAC-signed by the bench (Lua has no HMAC); each thread takes every
--               THREADS-th line. When a pool runs out it starts again (the receiver then
--               answers "duplicate", which is counted).
--
-- The pool's requests are kept in memory LuaJIT's garbage collector does not look into
-- (one malloc'd buffer, through the FFI), not as hundreds of thousands of Lua strings: with
-- those, a collection now and then held this thread for hundreds of milliseconds while
-- every connection sat idle, and wrk counted its own pause as the server's latency
-- (bench/README.md).
--
-- SEQ_BASE makes sequence numbers unique across runs; LIMIT > 0 stops each thread after
-- LIMIT callbacks (further requests are GET /healthz and the thread stops itself).
--
-- done() prints one line "BENCH_RESULT {json}" that bench/load.py reads.

local threads = {}
local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

local mode
local nthreads = 1
local seq_base = 0
local limit = 0
local ffi = require("ffi")
ffi.cdef [[
  void *realloc(void *ptr, size_t size);
]]

local paths, prefixes = {}, {}
local k = 0
-- The pool: request i (1-based) is pool_len[i - 1] bytes at pool_buf + pool_at[i - 1].
local pool_buf, pool_at, pool_len
local pool_count, pool_bytes, buf_capacity, index_capacity = 0, 0, 0, 0

local function capacity_for(capacity, wanted)
  while capacity < wanted do
    capacity = math.max(capacity * 2, 4096)
  end
  return capacity
end

local function reallocated(ptr, ctype, count, size_of)
  local bigger = ffi.C.realloc(ptr, count * size_of)
  assert(bigger ~= nil, "out of memory for the request pool")
  return ffi.cast(ctype, bigger)
end

local function pool_add(request)
  local size = #request
  if pool_bytes + size > buf_capacity then
    buf_capacity = capacity_for(buf_capacity, pool_bytes + size)
    pool_buf = reallocated(pool_buf, "char *", buf_capacity, 1)
  end
  if pool_count == index_capacity then
    index_capacity = capacity_for(index_capacity, pool_count + 1)
    pool_at = reallocated(pool_at, "double *", index_capacity, 8) -- read as plain numbers
    pool_len = reallocated(pool_len, "int32_t *", index_capacity, 4)
  end
  ffi.copy(pool_buf + pool_bytes, request, size)
  pool_at[pool_count] = pool_bytes
  pool_len[pool_count] = size
  pool_bytes = pool_bytes + size
  pool_count = pool_count + 1
end

-- wrk calls request() once on thread 0 before the run, to check the script (and never sends
-- what it returns): that call must not use up a sequence number or a pooled body.
local verify_call
local json_headers = { ["Content-Type"] = "application/json" }

local function split(line)
  local out = {}
  for part in (line .. "\t"):gmatch("([^\t]*)\t") do
    out[#out + 1] = part
  end
  return out
end

function init(args)
  nthreads = tonumber(args[2])
  seq_base = tonumber(args[3])
  limit = tonumber(args[4])
  -- Counters read by done() through thread:get (globals of this thread's Lua state).
  sent, n2xx, accepted, duplicates, other, wrapped, pool_size = 0, 0, 0, 0, 0, 0, 0
  local index = 0
  for line in io.lines(args[1]) do
    if mode == nil then
      mode = line
    else
      local f = split(line)
      if mode == "template" then
        paths[#paths + 1] = f[1]
        prefixes[#prefixes + 1] = f[2]
      elseif index % nthreads == tid then
        pool_add(wrk.format("POST", f[1], {
          ["Content-Type"] = "application/json",
          ["X-Firma-Signature"] = f[2],
          ["X-Firma-Event"] = f[3],
          ["X-Firma-Delivery"] = "dlv_" .. index,
        }, f[4]))
      end
      index = index + 1
    end
  end
  pool_size = pool_count
  collectgarbage("collect") -- the lines read: gone before the load starts
  verify_call = (tid == 0)
end

function request()
  if verify_call then
    verify_call = false
    return wrk.format("GET", "/healthz")
  end
  if limit > 0 and sent >= limit then
    return wrk.format("GET", "/healthz")
  end
  sent = sent + 1
  if mode == "template" then
    local seq = seq_base + tid + nthreads * k
    k = k + 1
    local j = (seq % #paths) + 1
    return wrk.format("POST", paths[j], json_headers, prefixes[j] .. string.format("%d", seq) .. "}")
  end
  k = k + 1
  if k > pool_count then
    k = 1
    wrapped = wrapped + 1
  end
  return ffi.string(pool_buf + pool_at[k - 1], pool_len[k - 1])
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    n2xx = n2xx + 1
    if body ~= nil then
      if body:find("accepted", 1, true) then
        accepted = accepted + 1
      elseif body:find("duplicate", 1, true) then
        duplicates = duplicates + 1
      end
    end
  else
    other = other + 1
  end
  if limit > 0 and sent >= limit and accepted + duplicates + other >= limit then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local totals = { sent = 0, n2xx = 0, accepted = 0, duplicates = 0, other = 0, wrapped = 0,
                   pool_size = 0 }
  for _, thread in ipairs(threads) do
    for name, _ in pairs(totals) do
      totals[name] = totals[name] + (thread:get(name) or 0)
    end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "sent": %d, "n2xx": %d, '
      .. '"accepted": %d, "duplicates": %d, "other": %d, "wrapped": %d, "pool_size": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "p999": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, totals.sent, totals.n2xx, totals.accepted,
    totals.duplicates, totals.other, totals.wrapped, totals.pool_size,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end

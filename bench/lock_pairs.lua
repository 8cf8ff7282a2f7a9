-- wrk script: each thread (run with -t N -c N: one connection per thread) alternates
-- POST /locks/<name> and DELETE /locks/<name> on a lock of its own: one acquire+release pair
-- per two requests. Prints a WRKJSON summary line like claim_distinct.lua.
local threads = {}
local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

-- The daemon's TCP port wants its home's token (bench/_httpload.run_wrk passes it here).
local token = os.getenv("PORT_DADDY_TOKEN")
local headers = {["Content-Type"] = "application/json"}
if token then
  headers["Authorization"] = "Bearer " .. token
end

function init(args)
  counter = 0
  non2xx = 0
  prefix = args[1] or "bench-lock"
  name = string.format("%s-%d", prefix, tid)
  body = string.format('{"owner":"%s"}', name)
end

function request()
  counter = counter + 1
  local method = (counter % 2 == 1) and "POST" or "DELETE"
  return wrk.format(method, "/locks/" .. name, headers, body)
end

function response(status, headers, body)
  if status ~= 200 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do
    bad = bad + (t:get("non2xx") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "non200": %d, "socket_errors": %d, '
    .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, bad, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end

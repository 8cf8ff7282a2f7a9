-- wrk script: GET /health with the home's token (the full health reply, one core round trip).
-- Prints a WRKJSON summary line like claim_distinct.lua.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local token = os.getenv("PORT_DADDY_TOKEN")
local headers = {}
if token then
  headers["Authorization"] = "Bearer " .. token
end

function init(args)
  non2xx = 0
  req = wrk.format("GET", "/health", headers)
end

function request()
  return req
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

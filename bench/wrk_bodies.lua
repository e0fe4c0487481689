-- wrk script: POST a different pre-generated body on every request.
-- BENCH_BODIES names a file with one JSON body per line; BENCH_PATH the request path;
-- BENCH_AUTH (optional) an API key. Bodies are used in order; `wraps` counts how often the
-- list ran out and started over (then bodies repeat, which the bench reports).
-- `done` prints one line starting with BENCH_JSON for bench/_load.py to parse.
-- Optional: BENCH_DELAY_MS, a pause before each request of a connection (paces a closed loop near
-- connections / (delay + latency) requests/s); BENCH_STATUSES=1 counts answers by status (200, 429,
-- other) and 429s without a Retry-After header (a `response` callback: a little more wrk CPU).

local bodies, n, i, wraps = {}, 0, 0, 0
local path = os.getenv("BENCH_PATH") or "/"
local headers = { ["Content-Type"] = "application/json" }
local key = os.getenv("BENCH_AUTH")
if key and key ~= "" then headers["Authorization"] = "Bearer " .. key end

local threads = {}
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "") or 0
local count_statuses = os.getenv("BENCH_STATUSES") == "1"
n200, n429, n429_no_retry, nother = 0, 0, 0, 0

if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

if count_statuses then
  function response(status, headers, body)
    if status == 200 then
      n200 = n200 + 1
    elseif status == 429 then
      n429 = n429 + 1
      if not (headers["retry-after"] or headers["Retry-After"]) then
        n429_no_retry = n429_no_retry + 1
      end
    else
      nother = nother + 1
    end
  end
end

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(os.getenv("BENCH_BODIES")) do
    n = n + 1
    bodies[n] = line
  end
end

function request()
  i = i + 1
  if i > n then
    i = 1
    wraps = wraps + 1
  end
  return wrk.format("POST", path, headers, bodies[i])
end

function done(summary, latency, requests)
  local w, sent = 0, 0
  local c200, c429, c429n, cother = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    w = w + (t:get("wraps") or 0)
    c200 = c200 + (t:get("n200") or 0)
    c429 = c429 + (t:get("n429") or 0)
    c429n = c429n + (t:get("n429_no_retry") or 0)
    cother = cother + (t:get("nother") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_s": %.6f, "bytes": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "status_errors": %d, "timeouts": %d, "wraps": %d, "lat_mean_ms": %.4f, ' ..
    '"lat_p50_ms": %.4f, "lat_p90_ms": %.4f, "lat_p99_ms": %.4f, "lat_max_ms": %.4f, ' ..
    '"statuses": {"200": %d, "429": %d, "429_without_retry_after": %d, "other": %d}}\n',
    summary.requests, summary.duration / 1e6, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    w, latency.mean / 1000, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, c200, c429, c429n, cother))
end

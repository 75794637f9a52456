-- wrk script for the benchmarks: POST a JSON body with a unique number per request, optional auth header.
-- Arguments (after `--`): path, body template (every "{n}" becomes a number unique in this run), Authorization.
-- Prints one line "JSON {...}" with the request count, duration, p50/p99 latency (µs) and the error count.

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  path = args[1]
  template = args[2]
  auth = args[3]
  counter = 0
  headers = { ["Content-Type"] = "application/json" }
  if auth ~= nil and auth ~= "" then
    headers["Authorization"] = auth
  end
end

function request()
  counter = counter + 1
  local n = string.format("%d-%d", tid, counter)
  local body = string.gsub(template, "{n}", n)
  return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.timeout + e.status
  io.write(string.format(
    'JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), errors))
end

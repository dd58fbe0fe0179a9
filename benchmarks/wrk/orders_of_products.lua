-- POST /orders, one line each, cycling over the product ids first..last (wrk -s ... -- first last).
-- Prints one JSON line of totals when wrk is done.
local first, last, counter

function init(args)
  first = tonumber(args[1]) or 1
  last = tonumber(args[2]) or first
  counter = math.random(0, 1000)
end

function request()
  counter = counter + 1
  local product = first + (counter % (last - first + 1))
  local body = '{"items":[{"product_id":' .. product .. ',"qty":1}]}'
  local headers = { ["Content-Type"] = "application/json", ["X-User"] = "wrk-" .. (counter % 1000) }
  return wrk.format("POST", "/orders", headers, body)
end

function done(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "non_2xx": %d, "socket_errors": %d, "duration_s": %.3f}\n',
    summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration / 1e6))
end

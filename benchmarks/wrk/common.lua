-- Shared by the scenario scripts: a JSON summary line when wrk is done (requests, non-2xx,
-- socket errors, latency percentiles in ms) plus the scenario's own counters.
local M = {}

function M.summary(summary, latency, extra)
  local errors = summary.errors
  local line = string.format(
    '{"requests": %d, "non_2xx": %d, "socket_errors": %d, "duration_s": %.3f, ' ..
    '"p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f%s}\n',
    summary.requests, errors.status, errors.connect + errors.read + errors.write + errors.timeout,
    summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, extra or "")
  io.write(line)
end

-- Orders of 1-3 distinct random products (or `lines` products), qty 1 each.
function M.order_body(products, lines)
  local n = lines or math.random(1, 3)
  local chosen, items = {}, {}
  while #items < n do
    local id = math.random(1, products)
    if not chosen[id] then
      chosen[id] = true
      items[#items + 1] = '{"product_id":' .. id .. ',"qty":1}'
    end
  end
  return '{"items":[' .. table.concat(items, ",") .. ']}'
end

M.json = { ["Content-Type"] = "application/json" }

-- BENCH_TOKENS, a file of "user token" lines (benchmarks/tokens.py): each user is sent as its bearer token
-- (AUTH_MODE=jwt), tokens made before the run; unset: as X-User.
local tokens = nil
local token_file = os.getenv("BENCH_TOKENS")
if token_file and token_file ~= "" then
  tokens = {}
  for line in io.lines(token_file) do
    local user, token = line:match("^(%S+) (%S+)$")
    tokens[user] = "Bearer " .. token
  end
end

-- `headers` (a new table when nil) with the user added, as X-User or as its bearer token.
function M.as_user(user, headers)
  headers = headers or {}
  if tokens then
    headers["Authorization"] = tokens[user]
  else
    headers["X-User"] = user
  end
  return headers
end

return M

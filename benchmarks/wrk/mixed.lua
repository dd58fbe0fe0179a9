-- 80 % GET /orders/me of a random reader, 20 % POST /orders; counts the orders placed.
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "?.lua"
local common = require("common")
local threads = {}

function setup(thread) table.insert(threads, thread) end

function init(args)
  placed = 0
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

function request()
  if math.random() < 0.2 then
    local headers = common.as_user("buyer-" .. math.random(1, 5000), { ["Content-Type"] = "application/json" })
    return wrk.format("POST", "/orders", headers, common.order_body(1000))
  end
  return wrk.format("GET", "/orders/me", common.as_user("reader-" .. (math.random(1, 1000) - 1)))
end

-- A placed order answers an object, a page an array (responses of a thread's connections interleave).
function response(status, headers, body)
  if status == 200 and body:sub(1, 1) == "{" then placed = placed + 1 end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("placed") end
  common.summary(summary, latency, string.format(', "placed": %d', total))
end

-- POST /orders of 1-3 random products of first..last but `mixed`, a share of them also taking `mixed`
-- (wrk -s orders_mixing_in.lua URL -- first last mixed percent). Orders that mix a product with others.
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "?.lua"
local common = require("common")
local first, last, mixed, percent

function init(args)
  first, last = tonumber(args[1]), tonumber(args[2])
  mixed, percent = tonumber(args[3]), tonumber(args[4]) or 0
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

function request()
  local chosen, items = {}, {}
  local n = math.random(1, 3)
  while #items < n do
    local id = math.random(first, last)
    if not chosen[id] and id ~= mixed then
      chosen[id] = true
      items[#items + 1] = '{"product_id":' .. id .. ',"qty":1}'
    end
  end
  if math.random(1, 100) <= percent then items[#items + 1] = '{"product_id":' .. mixed .. ',"qty":1}' end
  local headers = { ["Content-Type"] = "application/json", ["X-User"] = "mixer-" .. math.random(1, 5000) }
  return wrk.format("POST", "/orders", headers, '{"items":[' .. table.concat(items, ",") .. ']}')
end

function done(summary, latency, requests) common.summary(summary, latency) end

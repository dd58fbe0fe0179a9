-- POST /orders: 1-3 random products of 1..1000 (wrk -s create.lua URL -- [products] [lines]).
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "?.lua"
local common = require("common")
local products, lines

function init(args)
  products = tonumber(args[1]) or 1000
  lines = tonumber(args[2])
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

function request()
  local headers = common.as_user("buyer-" .. math.random(1, 5000), { ["Content-Type"] = "application/json" })
  return wrk.format("POST", "/orders", headers, common.order_body(products, lines))
end

function done(summary, latency, requests) common.summary(summary, latency) end

-- POST /orders: every order takes product 1.
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "?.lua"
local common = require("common")
local body = '{"items":[{"product_id":1,"qty":1}]}'

function request()
  local headers = common.as_user("buyer-" .. math.random(1, 5000), { ["Content-Type"] = "application/json" })
  return wrk.format("POST", "/orders", headers, body)
end

function done(summary, latency, requests) common.summary(summary, latency) end

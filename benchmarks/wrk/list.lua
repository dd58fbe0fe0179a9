-- GET /orders/me: the first page of a random reader (wrk -s list.lua URL -- [readers] [user]).
-- With `user`, always that user (the cost of a long history).
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "?.lua"
local common = require("common")
local readers, user

function init(args)
  readers = tonumber(args[1]) or 1000
  user = args[2]
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

function request()
  local who = user or ("reader-" .. (math.random(1, readers) - 1))
  return wrk.format("GET", "/orders/me", common.as_user(who))
end

function done(summary, latency, requests) common.summary(summary, latency) end

-- wrk script of bench/ocsp.sh: cycle through pre-built requests and count
-- answers that are not what the scenario expects.
--
--   wrk -t1 -c4 -d10s -s bench/ocsp.lua http://127.0.0.1:PORT -- REQUESTS EXPECT
--
-- REQUESTS: one request a line, "METHOD TARGET HEXBODY" ("-" for no body),
--           written by bench/ocsp_bodies.py prepare.
-- EXPECT:   "ocsp"  HTTP 200 and an OCSPResponse with responseStatus
--                   successful (0), i.e. starting 30 82 xx xx 0a 01 00;
--           "http"  HTTP 200 only (GET /health).
-- Every request is formatted once in init(); request() only picks the next
-- string, so each scenario costs wrk the same per request.

local requests = {}
local count = 0
local index = 0
local expect = "ocsp"

bad = 0        -- globals: read by done() through thread:get()
ocsp_ok = 0

local function unhex(text)
   return (text:gsub("..", function(pair) return string.char(tonumber(pair, 16)) end))
end

function init(args)
   expect = args[2] or "ocsp"
   for line in io.lines(args[1]) do
      local method, target, body = line:match("^(%S+) (%S+) (%S+)$")
      if method then
         local headers = {}
         local payload = nil
         if body ~= "-" then
            payload = unhex(body)
            headers["Content-Type"] = "application/ocsp-request"
         end
         count = count + 1
         requests[count] = wrk.format(method, target, headers, payload)
      end
   end
   if count == 0 then
      error("no requests in " .. tostring(args[1]))
   end
end

function request()
   index = index % count + 1
   return requests[index]
end

function response(status, headers, body)
   if status ~= 200 then
      bad = bad + 1
   elseif expect == "ocsp" then
      -- SEQUENCE with a 2-byte length, then ENUMERATED 0 (successful)
      local b1, b2, _, _, b5, b6, b7 = body:byte(1, 7)
      if b1 == 0x30 and b2 == 0x82 and b5 == 0x0a and b6 == 0x01 and b7 == 0x00 then
         ocsp_ok = ocsp_ok + 1
      else
         bad = bad + 1
      end
   end
end

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function done(summary, latency, reqs)
   local total_bad, total_ok = 0, 0
   for _, thread in ipairs(threads) do
      total_bad = total_bad + thread:get("bad")
      total_ok = total_ok + thread:get("ocsp_ok")
   end
   io.write(string.format("bench: requests %d, bad answers %d, successful OCSP %d, socket errors %d\n",
      summary.requests, total_bad, total_ok,
      summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end

-- wrk script for scripts/load-rehearsal.sh: counts responses that are not 2xx (wrk itself counts
-- only status > 399, and exits 0 whatever happened), and at the end prints a summary, writes it
-- to $WRK_SUMMARY when set, and exits 1 on any socket error or non-2xx response.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   non2xx = 0
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
   end
end

function done(summary, latency, requests)
   local bad = 0
   for _, thread in ipairs(threads) do
      bad = bad + thread:get("non2xx")
   end
   local e = summary.errors
   local socket = e.connect + e.read + e.write + e.timeout
   local lines = {
      string.format("requests=%d", summary.requests),
      string.format("seconds=%.3f", summary.duration / 1e6),
      string.format("socket_errors=%d", socket),
      string.format("non2xx=%d", bad),
      string.format("p50_us=%d", latency:percentile(50.0)),
      string.format("p99_us=%d", latency:percentile(99.0)),
      string.format("max_us=%d", latency.max),
   }
   local text = table.concat(lines, "\n") .. "\n"
   io.write(text)
   local path = os.getenv("WRK_SUMMARY")
   if path then
      local f = assert(io.open(path, "w"))
      f:write(text)
      f:close()
   end
   if socket > 0 or bad > 0 then
      io.stderr:write(string.format("wrk-check: %d socket errors, %d non-2xx responses\n", socket, bad))
      os.exit(1)
   end
end

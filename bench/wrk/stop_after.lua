-- GET until `wrk ... -- N` responses have arrived on this (single) wrk thread, then stop it.
-- wrk still waits out its -d duration, so keep -d short and call it in a bounded loop.
local limit = 10000
local seen = 0

function init(args)
  if args[1] then limit = tonumber(args[1]) end
end

function response(status, headers, body)
  seen = seen + 1
  if seen >= limit then wrk.thread:stop() end
end

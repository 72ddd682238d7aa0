-- Sends each request with the next token of the file named by DPMS_BENCH_TOKENS (one JWT per
-- line, each good once). Past the end it starts over: those replays answer 401 and show up in
-- wrk's "Non-2xx" count, so a file too short spoils the run visibly.
local tokens, n, i = {}, 0, 0

function init(args)
  for line in io.lines(os.getenv("DPMS_BENCH_TOKENS")) do
    n = n + 1
    tokens[n] = "Bearer " .. line
  end
end

function request()
  i = i + 1
  if i > n then i = 1 end
  return wrk.format(nil, nil, { ["Authorization"] = tokens[i] })
end

-- wrk script: POST /v1/observe for one target with a new nonce on every request.
-- Environment: BENCH_TARGET_HOST, BENCH_TARGET_PORT (the target asked about),
-- BENCH_RUN_ID (makes nonces unique across runs), BENCH_MAX_REQUESTS (each wrk
-- thread stops after that many responses, so the loop is bounded in count as
-- well as by wrk's -d duration).
local target_host = os.getenv("BENCH_TARGET_HOST") or "site.bench.test"
local target_port = os.getenv("BENCH_TARGET_PORT") or "443"
local run_id = os.getenv("BENCH_RUN_ID") or "run"
local max_responses = tonumber(os.getenv("BENCH_MAX_REQUESTS") or "200000")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local thread_count = 0
function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
end

local counter = 0
local responses = 0

function request()
  counter = counter + 1
  local nonce = string.format("w%s%03d%012d", run_id, tid or 0, counter)
  local body = string.format('{"targets":[{"host":"%s","port":%s}],"nonce":"%s"}',
                             target_host, target_port, nonce)
  return wrk.format("POST", "/v1/observe", nil, body)
end

function response(status, headers, body)
  responses = responses + 1
  if responses >= max_responses then
    wrk.thread:stop()
  end
end

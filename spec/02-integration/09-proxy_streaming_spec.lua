-- Bodies stream through the proxy with backpressure: 1 GiB downloads and
-- uploads pass with the worker's memory flat (VmRSS sampled while they run).
local helpers = require "spec.helpers"
local json = helpers.json

local GiB = 1024 * 1024 * 1024
local RSS_LIMIT_KB = 64 * 1024
-- ASan's allocator quarantines freed memory (256 MiB by default), so RSS
-- says nothing about buffering there: the sanitizer run checks the bytes only.
local CHECK_RSS = not os.getenv("MOONGATE_ASAN")
-- sha256 of 1 GiB of zero bytes
local ZERO_GIB_SHA = "49bc20df15e412a64472421e13fe86ff1c5165e18b2afccf160d4dc19fe68a14"

local ROUTES = [[
return {
  { prefix = "/", upstream = "up", body_size = 0 },
}
]]

describe("proxy streaming", function()
    local up, mg, dir

    lazy_setup(function()
        up = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "streaming", upstream = up, routes = ROUTES, workers = 1 })
        dir = helpers.tmpdir("streaming-files")
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        helpers.stop(up and up.pid)
        if dir then
            os.remove(dir .. "/zero-1g")
        end
        helpers.cleanup()
    end)

    -- Runs a shell command in the background and samples the workers' RSS
    -- until it ends. Returns output, exit code, max RSS (KiB), seconds.
    local function run_sampling(cmd, timeout)
        local base = 0
        for _, w in ipairs(mg:workers()) do
            base = math.max(base, helpers.rss_kb(w) or 0)
        end
        local t0 = helpers.now()
        local job = helpers.spawn(cmd)
        local max = 0
        while not job.done() and helpers.now() - t0 < (timeout or 120) do
            for _, w in ipairs(mg:workers()) do
                max = math.max(max, helpers.rss_kb(w) or 0)
            end
            helpers.sleep(0.05)
        end
        local out, rc = job:wait(5)
        return out, rc, max, helpers.now() - t0, base
    end

    local DOWNLOAD = "curl -sS --max-time 40 -o /dev/null -w '%{http_code} %{size_download}' "

    local function url(path)
        return helpers.shq("http://127.0.0.1:" .. mg.port .. path)
    end

    it("passes a 32 MiB download byte for byte", function()
        local want = json.decode((select(3, helpers.http(up.port, "GET", "/bytes/33554432?sha=1")))).sha256
        for _, q in ipairs({ "", "?chunked=1" }) do
            local out = helpers.sh("curl -sS --max-time 20 " .. url("/bytes/33554432" .. q) .. " | sha256sum")
            assert.equal(want, out:match("^(%x+)  %-"), q .. ": " .. out)
        end
    end)

    it("streams a 1 GiB download (Content-Length) with flat memory", function()
        local out, rc, max, took, base = run_sampling(DOWNLOAD .. url("/bytes/" .. GiB))
        assert.equal(0, rc, out)
        assert.equal("200 " .. GiB, out:match("%d+ %d+"))
        print(string.format("\n  1 GiB download: %.1f s, worker RSS %d -> max %d KiB", took, base, max))
        assert.truthy(max > 0, "no worker RSS sampled")
        assert.truthy(not CHECK_RSS or max < RSS_LIMIT_KB, "worker RSS reached " .. max .. " KiB")
    end)

    it("streams a 1 GiB chunked download with flat memory", function()
        local out, rc, max, took, base = run_sampling(DOWNLOAD .. url("/bytes/" .. GiB .. "?chunked=1"))
        assert.equal(0, rc, out)
        assert.equal("200 " .. GiB, out:match("%d+ %d+"))
        print(string.format("\n  1 GiB chunked download: %.1f s, worker RSS %d -> max %d KiB", took, base, max))
        assert.truthy(not CHECK_RSS or max < RSS_LIMIT_KB, "worker RSS reached " .. max .. " KiB")
    end)

    it("applies backpressure to a slow client (256 MiB at 64 MiB/s)", function()
        local n = 256 * 1024 * 1024
        local out, rc, max, took, base = run_sampling("curl -sS --max-time 20 --limit-rate 64M -o /dev/null "
            .. "-w '%{http_code} %{size_download}' " .. url("/bytes/" .. n))
        assert.equal(0, rc, out)
        assert.equal("200 " .. n, out:match("%d+ %d+"))
        print(string.format("\n  slow client: %.1f s, worker RSS %d -> max %d KiB", took, base, max))
        assert.truthy(not CHECK_RSS or max < RSS_LIMIT_KB,
            "worker RSS reached " .. max .. " KiB: the upstream was not paused")
    end)

    it("streams a 1 GiB upload (Content-Length) with flat memory", function()
        local file = dir .. "/zero-1g"
        assert.equal(0, select(2, helpers.sh("truncate -s " .. GiB .. " " .. helpers.shq(file))))
        local out, rc, max, took, base = run_sampling("curl -sS --max-time 40 -X POST -H 'Expect:' -T "
            .. helpers.shq(file) .. " " .. url("/upload"))
        os.remove(file)
        assert.equal(0, rc, out)
        local j = json.decode(out)
        assert.equal(GiB, j.body_len)
        assert.equal(ZERO_GIB_SHA, j.body_sha256)
        print(string.format("\n  1 GiB upload: %.1f s, worker RSS %d -> max %d KiB", took, base, max))
        assert.truthy(not CHECK_RSS or max < RSS_LIMIT_KB, "worker RSS reached " .. max .. " KiB")
    end)

    it("streams a 1 GiB chunked upload with flat memory", function()
        local out, rc, max, took, base = run_sampling("head -c " .. GiB .. " /dev/zero | "
            .. "curl -sS --max-time 40 -X POST -H 'Expect:' -T - " .. url("/upload"))
        assert.equal(0, rc, out)
        local j = json.decode(out)
        assert.equal(GiB, j.body_len)
        assert.equal(ZERO_GIB_SHA, j.body_sha256)
        print(string.format("\n  1 GiB chunked upload: %.1f s, worker RSS %d -> max %d KiB", took, base, max))
        assert.truthy(not CHECK_RSS or max < RSS_LIMIT_KB, "worker RSS reached " .. max .. " KiB")
    end)
end)

-- Malformed requests and request-smuggling shapes, over raw sockets. Each
-- must get a 400 (or the status its case names) and a closed connection,
-- and must never reach the upstream: neither the request itself nor the
-- request smuggled behind it.
local helpers = require "spec.helpers"

local ROUTES = [=[
return {
  { prefix = "/", upstream = "up" },
}
]=]

-- "/mal-N" is the request, "/smuggled-N" the one hidden behind it.
local function smuggled(n)
    return "GET /smuggled-" .. n .. " HTTP/1.1\r\nHost: x\r\n\r\n"
end

-- name, bytes (built with n = case number), [where]. where = "body" when the
-- head is valid and only the body is bad: a streaming proxy may already have
-- sent the head upstream, but the request must never arrive complete.
local CASES = {
    { "Content-Length with Transfer-Encoding", function(n)
        return "POST /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
            .. "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" .. smuggled(n)
    end },
    { "Transfer-Encoding with Content-Length", function(n)
        return "POST /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            .. "Content-Length: 40\r\n\r\n0\r\n\r\n" .. smuggled(n)
    end },
    { "two differing Content-Length", function(n)
        return "POST /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            .. "Content-Length: 44\r\n\r\nhello" .. smuggled(n)
    end },
    { "Content-Length list with differing values", function(n)
        return "POST /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 44\r\n\r\nhello"
            .. smuggled(n)
    end },
    { "non-numeric Content-Length", function(n)
        return "POST /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\nhello"
            .. smuggled(n)
    end },
    { "negative Content-Length", function(n)
        return "POST /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n" .. smuggled(n)
    end },
    { "Content-Length with a plus sign", function(n)
        return "POST /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello"
            .. smuggled(n)
    end },
    { "bad chunk size", function(n)
        return "POST /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            .. "zz\r\nhello\r\n0\r\n\r\n" .. smuggled(n)
    end, "body" },
    { "overflowing chunk size", function(n)
        return "POST /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            .. "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n" .. smuggled(n)
    end, "body" },
    { "negative chunk size", function(n)
        return "POST /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            .. "-5\r\nhello\r\n0\r\n\r\n" .. smuggled(n)
    end, "body" },
    { "bare LF ending the request line", function(n)
        return "GET /mal-" .. n .. " HTTP/1.1\nHost: x\r\n\r\n" .. smuggled(n)
    end },
    { "bare CR in the request line", function(n)
        return "GET /mal-" .. n .. " HTTP/1.1\rHost: x\r\n\r\n" .. smuggled(n)
    end },
    { "bare CR inside a header value", function(n)
        return "GET /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n" .. smuggled(n)
    end },
    { "bare LF ending a header line", function(n)
        return "GET /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\nX-A: a\nX-B: b\r\n\r\n" .. smuggled(n)
    end },
    { "obs-fold", function(n)
        return "GET /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n" .. smuggled(n)
    end },
    { "obs-fold on Transfer-Encoding", function(n)
        return "POST /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding:\r\n"
            .. " chunked\r\n\r\nhello" .. smuggled(n)
    end },
    { "space before the colon", function(n)
        return "GET /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n" .. smuggled(n)
    end },
    { "space before the colon of Transfer-Encoding", function(n)
        return "POST /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            .. "Transfer-Encoding : chunked\r\n\r\nhello" .. smuggled(n)
    end },
    { "missing Host on HTTP/1.1", function(n)
        return "GET /mal-" .. n .. " HTTP/1.1\r\nX-A: b\r\n\r\n" .. smuggled(n)
    end },
    { "two Host headers", function(n)
        return "GET /mal-" .. n .. " HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" .. smuggled(n)
    end },
    { "invalid characters in a header name", function(n)
        return "GET /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\nX(A): b\r\n\r\n" .. smuggled(n)
    end },
    { "a space inside a header name", function(n)
        return "GET /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n" .. smuggled(n)
    end },
    { "NUL in a header value", function(n)
        return "GET /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n" .. smuggled(n)
    end },
    { "control character in the target", function(n)
        return "GET /mal-" .. n .. "\1x HTTP/1.1\r\nHost: x\r\n\r\n" .. smuggled(n)
    end },
    { "garbage request line", function(n)
        return "HELLO-" .. n .. "\r\n\r\n" .. smuggled(n)
    end },
    { "unknown HTTP version", function(n)
        return "GET /mal-" .. n .. " HTTP/9.9\r\nHost: x\r\n\r\n" .. smuggled(n)
    end, nil, { 400, 505 } },
    -- RFC 9112 6.1: the body is framed, but a coding we do not implement
    -- (gzip) would reach the upstream still applied
    { "a transfer coding before chunked", function(n)
        return "POST /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            .. "5\r\nhello\r\n0\r\n\r\n" .. smuggled(n)
    end, nil, { 501 } },
    { "a transfer coding before chunked, on two lines (one list)", function(n)
        return "POST /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n"
            .. "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" .. smuggled(n)
    end, nil, { 501 } },
    { "chunked not the final coding", function(n)
        return "POST /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
            .. "5\r\nhello\r\n0\r\n\r\n" .. smuggled(n)
    end },
    -- RFC 9112 3: single spaces between the request line's parts
    { "two spaces in the request line", function(n)
        return "GET  /mal-" .. n .. " HTTP/1.1\r\nHost: x\r\n\r\n" .. smuggled(n)
    end },
    { "two spaces before the version", function(n)
        return "GET /mal-" .. n .. "  HTTP/1.1\r\nHost: x\r\n\r\n" .. smuggled(n)
    end },
    -- RFC 9112 2.2: empty lines before the request line may be ignored, but
    -- the head after them is still held to CRLF
    { "bare LF after leading empty lines", function(n)
        return "\r\n\r\nGET /mal-" .. n .. " HTTP/1.1\nHost: x\r\n\r\n" .. smuggled(n)
    end },
}

describe("malformed requests", function()
    local up, mg

    lazy_setup(function()
        up = helpers.start_upstream()
        mg = helpers.start_moongate({ name = "malformed", upstream = up, routes = ROUTES, workers = 1 })
    end)

    lazy_teardown(function()
        if mg then
            mg:stop()
        end
        helpers.stop(up and up.pid)
        helpers.cleanup()
    end)

    local function reached(n, log, which)
        for _, l in ipairs(log[which]) do
            if l:find("/mal-" .. n, 1, true) or l:find("/smuggled-" .. n, 1, true) then
                return l
            end
        end
    end

    it("takes empty lines before the request line (RFC 9112 2.2)", function()
        helpers.upstream_reset(up)
        local data = helpers.raw(mg.port, "\r\n\r\nGET /lead HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert.matches("^HTTP/1%.1 200", data)
        helpers.sleep(0.2)
        assert.same({ "GET /lead" }, helpers.upstream_log(up).heads)
    end)

    it("forwards a well-formed request (control)", function()
        helpers.upstream_reset(up)
        local data = helpers.raw(mg.port, "GET /control HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert.matches("^HTTP/1%.1 200", data)
        helpers.sleep(0.2)
        assert.same({ "GET /control" }, helpers.upstream_log(up).heads)
    end)

    for n, case in ipairs(CASES) do
        local name, build, where, codes = case[1], case[2], case[3], case[4] or { 400 }
        it("refuses " .. name .. " with " .. table.concat(codes, "/") .. ", closes, forwards nothing", function()
            helpers.upstream_reset(up)
            local data, closed, why = helpers.raw(mg.port, build(n), { timeout = 3 })
            data = data or ""
            local st = tonumber(data:match("^HTTP/1%.[01] (%d%d%d) "))
            local ok = false
            for _, c in ipairs(codes) do
                ok = ok or st == c
            end
            assert.truthy(ok, "got: " .. data:sub(1, 120):gsub("\r", "\\r"))
            assert.truthy(closed, "connection left open (" .. tostring(why) .. ")")
            -- only one response: nothing after the 400 was served
            local _, count = data:gsub("HTTP/1%.%d %d%d%d ", "")
            assert.equal(1, count, "more than one response: " .. data:gsub("\r", "\\r"))
            helpers.sleep(0.2)
            local log = helpers.upstream_log(up)
            if where == "body" then
                assert.is_nil(reached(n, log, "complete"), "reached the upstream complete")
                for _, l in ipairs(log.heads) do
                    assert.falsy(l:find("/smuggled-" .. n, 1, true), "smuggled request reached the upstream")
                end
            else
                assert.is_nil(reached(n, log, "heads"), "reached the upstream")
            end
        end)
    end
end)

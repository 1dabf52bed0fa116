-- bench/cosocket.sh: one upstream call per request, made by a Lua handler
-- with moongate.http.request (/http) or with a keep-alive cosocket speaking
-- HTTP/1.1 by hand (/sock), as OpenResty's peer does with ngx.socket.tcp.
local moongate = require "moongate"

local REQ = "GET /x HTTP/1.1\r\nHost: 127.0.0.1:19001\r\n\r\n"

return {
  { path = "/http", handler = function()
      local resp, err = moongate.http.request{ upstream = "runtime", path = "/x" }
      if not resp then return 502, { error = err } end
      return resp.status, resp.body, { ["Content-Type"] = "application/json" }
  end },

  { path = "/sock", handler = function()
      local sock = moongate.socket.tcp()
      sock:settimeout(5000)
      local ok, err = sock:connect("127.0.0.1", 19001)
      if not ok then return 502, { error = err } end
      sock:send(REQ)
      local status = sock:receive("*l")
      local len
      while true do
        local line, rerr = sock:receive("*l")
        if not line then return 502, { error = rerr } end
        if line == "" then break end
        local v = line:match("^[Cc]ontent%-[Ll]ength:%s*(%d+)")
        if v then len = tonumber(v) end
      end
      local body = sock:receive(len)
      sock:setkeepalive(60000, 128)
      return tonumber(status:match(" (%d+)")), body, { ["Content-Type"] = "application/json" }
  end },
}

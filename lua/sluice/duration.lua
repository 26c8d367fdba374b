-- sluice.duration: policy durations ("250ms", "30s", "5m", "1h", "1d", or a
-- number of seconds) to whole milliseconds.
local M = {}

local UNITS = { [""] = 1000, ms = 1, s = 1000, m = 60000, h = 3600000, d = 86400000 }

-- The largest duration accepted: 10 years, far past any sensible TTL or
-- window, and small enough that every millisecond count is an exact integer.
M.MAX_MS = 10 * 365 * 86400000

local HINT = '(use e.g. "30s", "5m", "1h")'

local function show(v)
  if type(v) == "string" then return string.format("%q", v) end
  return tostring(v)
end

-- Returns the duration in milliseconds (an integer), or nil and a message
-- such as 'bad duration "5 minutes" (use e.g. "30s", "5m", "1h")'.
-- With allow_zero, 0 is accepted (it means "never" or "not at all" where the
-- field says so); otherwise a duration must be positive.
function M.parse(v, allow_zero)
  local ms
  if math.type(v) == "integer" then
    if v > M.MAX_MS // 1000 then
      return nil, "bad duration " .. show(v) .. " (more than 10 years)"
    end
    ms = v * 1000
  elseif math.type(v) == "float" then
    if v ~= v or v == math.huge or v == -math.huge then
      return nil, "bad duration " .. show(v) .. " " .. HINT
    end
    if v > M.MAX_MS / 1000 then
      return nil, "bad duration " .. show(v) .. " (more than 10 years)"
    end
    local exact = v * 1000
    ms = math.floor(exact + 0.5)
    if math.abs(exact - ms) > 1e-6 then
      return nil, "bad duration " .. show(v) .. " (not a whole number of milliseconds)"
    end
  elseif type(v) == "string" then
    local digits, unit = v:match("^(%d+)(%a*)$")
    if not digits then
      if v:match("^%d+[.,]%d*%a*$") then
        return nil, "bad duration " .. show(v)
          .. ' (decimals are not allowed in text; use a smaller unit: "90m", not "1.5h")'
      end
      return nil, "bad duration " .. show(v) .. " " .. HINT
    end
    local per = UNITS[unit]
    if not per then
      return nil, "bad duration " .. show(v) .. ": unknown unit \"" .. unit
        .. "\" (use ms, s, m, h or d)"
    end
    if #digits > 15 then
      return nil, "bad duration " .. show(v) .. " (too large)"
    end
    ms = math.tointeger(tonumber(digits)) * per
  else
    return nil, "expected a duration such as \"30s\", got " .. type(v)
  end
  ms = math.tointeger(ms)
  if not ms then
    return nil, "bad duration " .. show(v) .. " " .. HINT
  end
  if ms < 0 then
    return nil, "bad duration " .. show(v) .. " (negative)"
  end
  if ms == 0 and not allow_zero then
    return nil, "bad duration " .. show(v) .. " (must be more than 0)"
  end
  if ms > M.MAX_MS then
    return nil, "bad duration " .. show(v) .. " (more than 10 years)"
  end
  return ms
end

return M

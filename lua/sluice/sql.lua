-- sluice.sql: the little the policy checker needs to know about SQL text:
-- which $n placeholders a statement uses, outside quotes and comments.
local M = {}

-- Scans `sql` and returns a table { used = { [n] = true }, max = N,
-- statements = count }, or nil and a message for text PostgreSQL would
-- reject anyway (an unterminated quote or comment). Quoted text ('...',
-- E'...', "..."), dollar-quoted text ($tag$...$tag$) and comments (-- and
-- nested /* */) are skipped; a $n glued to an identifier (a$1) is part of it.
function M.scan(sql)
  local used, max, statements = {}, 0, 0
  local i, n = 1, #sql
  local content = false -- something other than blanks and comments since the last ';'
  while i <= n do
    local c = sql:sub(i, i)
    local nxt = sql:sub(i + 1, i + 1)
    if c == "'" then
      local escapes = i > 1 and sql:sub(i - 1, i - 1):match("[eE]") and
        not (i > 2 and sql:sub(i - 2, i - 2):match("[%w_$]"))
      local j = i + 1
      while true do
        if j > n then return nil, "unterminated quoted text" end
        local d = sql:sub(j, j)
        if escapes and d == "\\" then
          j = j + 2
        elseif d == "'" then
          if sql:sub(j + 1, j + 1) == "'" then
            j = j + 2
          else
            break
          end
        else
          j = j + 1
        end
      end
      i = j + 1
      content = true
    elseif c == '"' then
      local j = sql:find('"', i + 1, true)
      while j and sql:sub(j + 1, j + 1) == '"' do
        j = sql:find('"', j + 2, true)
      end
      if not j then return nil, "unterminated quoted identifier" end
      i = j + 1
      content = true
    elseif c == "-" and nxt == "-" then
      local j = sql:find("\n", i + 2, true)
      i = j and j + 1 or n + 1
    elseif c == "/" and nxt == "*" then
      local depth, j = 1, i + 2
      while depth > 0 do
        if j > n then return nil, "unterminated /* comment" end
        local two = sql:sub(j, j + 1)
        if two == "/*" then
          depth, j = depth + 1, j + 2
        elseif two == "*/" then
          depth, j = depth - 1, j + 2
        else
          j = j + 1
        end
      end
      i = j
    elseif c == "$" then
      local glued = i > 1 and sql:sub(i - 1, i - 1):match("[%w_$]")
      local digits = sql:match("^%d+", i + 1)
      if digits and not glued then
        local k = tonumber(digits)
        used[k] = true
        if k > max then max = k end
        i = i + 1 + #digits
        content = true
      else
        local tag = not glued and sql:match("^%$[%a_\128-\255]?[%w_\128-\255]*%$", i)
        if tag and not tag:match("^%$%d") then
          local close = sql:find(tag, i + #tag, true)
          if not close then return nil, "unterminated dollar-quoted text " .. tag end
          i = close + #tag
        else
          i = i + 1
        end
        content = true
      end
    elseif c == ";" then
      if content then statements = statements + 1 end
      content = false
      i = i + 1
    else
      if not c:match("%s") then content = true end
      i = i + 1
    end
  end
  if content then statements = statements + 1 end
  return { used = used, max = max, statements = statements }
end

return M

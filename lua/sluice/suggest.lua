-- sluice.suggest: "did you mean ...?" hints for misspelt names, by edit distance.
local M = {}

-- Optimal string alignment distance: insertions, deletions, substitutions and
-- swaps of two neighbouring characters each cost 1.
function M.distance(a, b)
  local la, lb = #a, #b
  if la == 0 then return lb end
  if lb == 0 then return la end
  local d = {}
  for i = 0, la do
    d[i] = { [0] = i }
  end
  for j = 0, lb do
    d[0][j] = j
  end
  for i = 1, la do
    local ca = a:byte(i)
    for j = 1, lb do
      local cb = b:byte(j)
      local cost = ca == cb and 0 or 1
      local v = math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
      if i > 1 and j > 1 and ca == b:byte(j - 1) and a:byte(i - 1) == cb then
        v = math.min(v, d[i - 2][j - 2] + 1)
      end
      d[i][j] = v
    end
  end
  return d[la][lb]
end

-- Returns the candidate closest to `word` when it is close enough to be a
-- likely misspelling (at most 2 edits, and fewer edits than `word` has
-- characters), else nil. `candidates` is an array of strings; ties go to the
-- earlier one.
function M.closest(word, candidates)
  if type(word) ~= "string" or word == "" then return nil end
  local lower = word:lower()
  local best, best_d
  for _, c in ipairs(candidates) do
    -- Lengths apart by more than 2 are more than 2 edits apart: not worth
    -- the quadratic distance (a name can be long).
    local d = math.abs(#word - #c) <= 2 and M.distance(lower, c:lower()) or 3
    if d <= 2 and d < #word and (not best_d or d < best_d) then
      best, best_d = c, d
    end
  end
  return best
end

-- " (did you mean 'ttl'?)" or "".
function M.hint(word, candidates, open, close)
  local c = M.closest(word, candidates)
  if not c then return "" end
  return " (did you mean " .. (open or "'") .. c .. (close or "'") .. "?)"
end

return M

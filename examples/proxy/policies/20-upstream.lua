-- 20-upstream.lua - the app sluice stands in front of.
--
-- examples/proxy/app.py serves the CRM's routes itself, reading and writing
-- PostgreSQL (scripts/run-proxy-example.sh starts it on port 3000). Every
-- endpoint in the files after this one says `upstream = "app"`: sluice
-- forwards the request (same method, path, query and end-to-end headers,
-- X-User-Id included, plus X-Forwarded-For, X-Forwarded-Proto and Via) and caches,
-- limits and invalidates around it, so the app keeps no cache of its own.
--
--   url              where the app listens; a path here would prefix every path
--   timeout          the whole answer, else 504 (or the stale entry, where an
--                    endpoint allows stale_if_error)
--   connect_timeout  the TCP connection, else 502 (or the stale entry)

upstream "app" {
  url             = "http://127.0.0.1:3000",
  timeout         = "5s",
  connect_timeout = "1s",
}

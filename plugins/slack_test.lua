-- Tests of plugin.slack, run by `rivet plugin test plugins/slack.lua`. The harness starts no
-- servers, so these tests cover argument validation and the http policy the webhook call goes
-- through (a webhook on a loopback or metadata address is refused before any connection).
-- Delivery to a stand-in server is tested from Rust (shared/rivet-sandbox/tests/http).

local HOOK = "https://hooks.slack.com/services/T000/B000/XXXX"

return {
  tests = {
    ["notify needs a webhook and a message"] = function(t)
      t.raises(function() slack.notify({ message = "hi" }) end, "`webhook` is required")
      t.raises(function() slack.notify({ webhook = HOOK }) end, "give `message` or `blocks`")
      t.raises(function() slack.notify("hi") end, "expected a table of options")
    end,

    ["notify validates its options"] = function(t)
      t.raises(function() slack.notify({ webhook = "ftp://x", message = "m" }) end, "`webhook` must be an http(s) URL")
      t.raises(function() slack.notify({ webhook = HOOK, message = "m", chanel = "#x" }) end, "unknown option `chanel`")
      t.raises(function() slack.notify({ webhook = HOOK, message = "" }) end, "`message` must be a non-empty string")
      t.raises(function() slack.notify({ webhook = HOOK, message = "m", icon_emoji = "rocket" }) end, "`icon_emoji` must look like :name:")
      t.raises(function() slack.notify({ webhook = HOOK, blocks = {} }) end, "`blocks` must be a non-empty list")
      t.raises(function() slack.notify({ webhook = HOOK, message = "m", timeout = "5" }) end, "`timeout` must be a number")
    end,

    ["a webhook on an internal address is refused by the http policy"] = function(t)
      t.raises(function() slack.notify({ webhook = "http://127.0.0.1:9/hook", message = "m" }) end,
        "policy violation [http.destination]")
      t.raises(function() slack.notify({ webhook = "http://169.254.169.254/latest", message = "m" }) end,
        "policy violation [http.destination]")
    end,
  },
}

-- plugin.slack: post messages to a Slack incoming webhook.
--
-- The webhook URL is a credential (its path is the secret): pass it from a secret, e.g.
-- `slack.notify{webhook = env.get("SLACK_WEBHOOK"), message = "..."}`; secrets are masked in
-- every log line, and this plugin never logs or repeats the URL, only Slack's answer.
-- The request goes through the `http` module, so the runner's [http] policy applies (add
-- `hosts = ["hooks.slack.com"]` to pin it).

local M = {
  description = "Post messages to Slack through an incoming webhook",
  requires = { "http" },
}

local OPTIONS = {
  webhook = true, message = true, channel = true, username = true,
  icon_emoji = true, blocks = true, timeout = true,
}
local MAX_EXCERPT = 200

local function fail(msg)
  error("slack.notify: " .. msg, 3)
end

local function optional_string(opts, key)
  local v = opts[key]
  if v ~= nil and (type(v) ~= "string" or v == "") then
    fail("`" .. key .. "` must be a non-empty string")
  end
  return v
end

--- slack.notify{webhook=, message=, channel=, username=, icon_emoji=, blocks=, timeout=}
--- posts one message. Returns Slack's answer body (normally "ok").
function M.notify(opts)
  if type(opts) ~= "table" then
    error("slack.notify: expected a table of options", 2)
  end
  for k in pairs(opts) do
    if not OPTIONS[k] then fail("unknown option `" .. tostring(k) .. "`") end
  end
  local webhook = opts.webhook
  if type(webhook) ~= "string" or webhook == "" then
    fail("`webhook` is required (the incoming-webhook URL, usually from a secret)")
  end
  if not (webhook:find("^https://") or webhook:find("^http://")) then
    fail("`webhook` must be an http(s) URL")
  end
  local payload = {}
  payload.text = optional_string(opts, "message")
  payload.channel = optional_string(opts, "channel")
  payload.username = optional_string(opts, "username")
  local icon = optional_string(opts, "icon_emoji")
  if icon and not icon:find("^:[%w_+%-]+:$") then
    fail("`icon_emoji` must look like :name:")
  end
  payload.icon_emoji = icon
  if opts.blocks ~= nil then
    if type(opts.blocks) ~= "table" or #opts.blocks == 0 then
      fail("`blocks` must be a non-empty list of Block Kit blocks")
    end
    payload.blocks = opts.blocks
  end
  if payload.text == nil and payload.blocks == nil then
    fail("give `message` or `blocks`")
  end
  if opts.timeout ~= nil and type(opts.timeout) ~= "number" then
    fail("`timeout` must be a number of seconds")
  end
  local r = http.post(webhook, json.encode(payload), {
    headers = { ["Content-Type"] = "application/json; charset=utf-8" },
    timeout = opts.timeout,
  })
  if r.status < 200 or r.status > 299 then
    local excerpt = r.body:sub(1, MAX_EXCERPT):gsub("[%c]", " ")
    if #r.body > MAX_EXCERPT then excerpt = excerpt .. "..." end
    error("slack.notify: Slack answered " .. r.status .. ": " .. excerpt, 2)
  end
  log.info("slack: message posted")
  return r.body
end

return M

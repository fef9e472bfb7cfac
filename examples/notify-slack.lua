-- Post a message to Slack. The webhook is a secret, read from the environment:
--   SLACK_WEBHOOK=https://hooks.slack.com/services/... rivet run examples/notify-slack.lua --secret SLACK_WEBHOOK
return {
  name = "Notify Slack",
  requires = {"plugin.slack"},
  stages = {
    {
      name = "notify",
      script = function()
        slack.notify({
          webhook = env.get("SLACK_WEBHOOK"),
          message = "Build finished on " .. tostring(env.get("RIVET_JOB_ID")),
          username = "rivet",
          icon_emoji = ":rocket:",
        })
      end,
    },
  },
}

-- The seed example of the brief, as written, plus a notification stage. Check out a repository,
-- run its tests with pytest in python:3.11, tell Slack. Run it with:
--   printf '[container]\nimages = ["python:3.11"]\n' > policy.toml
--   SLACK_WEBHOOK=https://hooks.slack.com/services/... \
--     rivet run examples/build-and-deploy.lua --policy policy.toml --secret SLACK_WEBHOOK \
--     --input repo_url=https://example.com/repo.git [--input branch=dev]
-- Without the SLACK_WEBHOOK secret the notify stage is skipped.
return {
  name = "Build and Deploy",
  description = "Check out a repository, run its tests in python:3.11, notify Slack",
  requires = {"plugin.git", "plugin.slack", "container"},   -- injects globals git, slack
  inputs = {
    repo_url = {type = "string", description = "Repository to clone (URL or path)", required = true},
    branch   = {type = "string", default = "main"},
  },
  stages = {
    {name = "checkout", script = function() git.clone({url = env.get("repo_url"), branch = env.get("branch")}) end},
    {name = "test", container = "python:3.11", script = function() process.run({command = "pytest", args = {"tests/"}}) end},
    {name = "notify", condition = function() return env.get("SLACK_WEBHOOK") ~= nil end, script = function()
      slack.notify({webhook = env.get("SLACK_WEBHOOK"),
                    message = "Build and Deploy: tests passed on " .. env.get("branch") .. " (job " .. tostring(env.get("RIVET_JOB_ID")) .. ")"})
    end},
  },
}

-- The seed's shape without a container stage: clone a repository with the git plugin, run its
-- Python tests, report. Run it with:
--   rivet run examples/build-and-test.lua --input repo_url=/path/to/repo [--input branch=dev]
return {
  name = "Build and Test",
  description = "Clone a repository and run its unit tests",
  requires = {"plugin.git", "process"},
  inputs = {
    repo_url = {type = "string", description = "Repository to clone (path or URL)", required = true},
    branch   = {type = "string", default = "main"},
    verbose  = {type = "boolean", default = false},
  },
  stages = {
    {name = "checkout", script = function()
      git.clone({url = env.get("repo_url"), branch = env.get("branch"), dir = "src", depth = 1})
    end},
    {name = "test", timeout = "10m", script = function()
      local args = {"-m", "unittest", "discover", "-s", "src"}
      if env.get("verbose") then table.insert(args, "-v") end
      process.run({command = "python3", args = args})
    end},
    {name = "report", script = function()
      log.info("tested commit " .. git.head({dir = "src"}))
    end},
  },
}

-- plugin.docker-compose: bring a Compose project up and down, list and read its services, with
-- whichever compose tool the runner has: `docker-compose`, `podman-compose`, `docker compose`
-- or `podman compose` (tried in that order, first that answers `version`).
--
--   docker_compose.up{file = "compose.yml", project = "ci", services = {"db"}, build = false}
--   docker_compose.ps{file = "compose.yml", project = "ci"}            -> {code, stdout, ...}
--   docker_compose.logs{file = "compose.yml", project = "ci", services = {"db"}, tail = 100}
--   docker_compose.down{file = "compose.yml", project = "ci", volumes = true}
--
-- Every value is checked before any tool runs: file paths stay in the workspace, project and
-- service names are plain names, nothing may start with "-"; arguments are argv, never a shell.
--
-- A compose tool drives the container engine directly, and whoever drives the engine is root on
-- the host. So the runner advertises this plugin only where its policy allows one of the tools
-- in `process.allow` (none is by default), and the tool reaches the engine only where the
-- operator let jobs see it (the sandbox hides the engine's sockets; see docs/security.md).
-- For untrusted pipelines use the `container` module, which the runner brokers. Rootful Podman
-- needs `iptables` for bridge networks: add "/usr/sbin" to `process.search_path`.

local M = {
  description = "Compose projects (up, down, ps, logs) with docker-compose, podman-compose, docker compose or podman compose",
  requires = { "process" },
  binaries = { "docker-compose|podman-compose|docker|podman" },
}

-- Tools in order of preference: the program and the arguments that select compose.
local TOOLS = {
  { "docker-compose" },
  { "podman-compose" },
  { "docker", "compose" },
  { "podman", "compose" },
}

local tool -- the first tool that answered, found once per job

local function fail(call, msg)
  error("docker_compose." .. call .. ": " .. msg, 3)
end

local function violation(call, msg)
  error("policy violation [docker-compose.argument]: docker_compose." .. call .. ": " .. msg, 3)
end

local function find_tool()
  if tool then return tool end
  local tried = {}
  for _, t in ipairs(TOOLS) do
    local argv = {}
    for i = 2, #t do argv[#argv + 1] = t[i] end
    argv[#argv + 1] = "version"
    local ok, r = pcall(process.run, { command = t[1], args = argv, check = false, timeout = 30 })
    if ok and r.code == 0 then
      tool = t
      return tool
    end
    tried[#tried + 1] = table.concat(t, " ")
  end
  error("docker_compose: no compose tool answered (tried " .. table.concat(tried, ", ") .. ")", 3)
end

local function check_options(call, opts, allowed)
  if type(opts) ~= "table" then fail(call, "expected a table of options") end
  for k in pairs(opts) do
    if type(k) ~= "string" or not allowed[k] then
      fail(call, "unknown option `" .. tostring(k) .. "`")
    end
  end
end

-- A compose file: relative, inside the workspace, no option look-alikes.
local function check_file(call, file)
  if file == nil then return nil end
  if type(file) ~= "string" or file == "" then fail(call, "`file` must be a non-empty string") end
  if file:sub(1, 1) == "-" then violation(call, "`file` must not start with '-'") end
  if file:sub(1, 1) == "/" then violation(call, "`file` must be relative to the workspace") end
  if file:find("[%z\n\r]") then violation(call, "`file` contains a control character") end
  for part in file:gmatch("[^/]+") do
    if part == ".." then violation(call, "`file` must stay inside the workspace") end
  end
  return file
end

-- Project and service names: what Compose itself accepts.
local function check_name(call, what, name)
  if type(name) ~= "string" or not name:find("^[%w][%w_.-]*$") or #name > 63 then
    violation(call, "`" .. what .. "` must be letters, digits, '_', '.', '-' (not first), at most 63: " .. tostring(name))
  end
  return name
end

local function check_services(call, services)
  if services == nil then return {} end
  if type(services) ~= "table" then fail(call, "`services` must be a list of names") end
  local out = {}
  for i, s in ipairs(services) do out[i] = check_name(call, "services[" .. i .. "]", s) end
  return out
end

local function check_bool(call, what, v)
  if v ~= nil and type(v) ~= "boolean" then fail(call, "`" .. what .. "` must be a boolean") end
  return v
end

-- Runs the tool with the project options, then `args`.
local function compose(opts, args, call)
  local t = find_tool()
  local argv = {}
  for i = 2, #t do argv[#argv + 1] = t[i] end
  if opts.file then argv[#argv + 1] = "-f"; argv[#argv + 1] = opts.file end
  if opts.project then argv[#argv + 1] = "-p"; argv[#argv + 1] = opts.project end
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return process.run({ command = t[1], args = argv, timeout = opts.timeout, check = opts.check })
end

local COMMON = { file = true, project = true, timeout = true, check = true }

local function common(call, opts, extra)
  local allowed = {}
  for k in pairs(COMMON) do allowed[k] = true end
  for k in pairs(extra or {}) do allowed[k] = true end
  check_options(call, opts, allowed)
  check_file(call, opts.file)
  if opts.project ~= nil then check_name(call, "project", opts.project) end
  check_bool(call, "check", opts.check)
  if opts.timeout ~= nil and (type(opts.timeout) ~= "number" or opts.timeout <= 0) then
    fail(call, "`timeout` must be a positive number of seconds")
  end
end

--- docker_compose.up{file=, project=, services={}, build=false, timeout=, check=}: starts the
--- project's services in the background.
function M.up(opts)
  opts = opts or {}
  common("up", opts, { services = true, build = true })
  local services = check_services("up", opts.services)
  local args = { "up", "-d" }
  if check_bool("up", "build", opts.build) then args[#args + 1] = "--build" end
  if #services > 0 then args[#args + 1] = "--" end
  for _, s in ipairs(services) do args[#args + 1] = s end
  return compose(opts, args, "up")
end

--- docker_compose.down{file=, project=, volumes=false, timeout=, check=}: stops and removes the
--- project's containers (and its volumes with `volumes = true`).
function M.down(opts)
  opts = opts or {}
  common("down", opts, { volumes = true })
  local args = { "down" }
  if check_bool("down", "volumes", opts.volumes) then args[#args + 1] = "-v" end
  return compose(opts, args, "down")
end

--- docker_compose.ps{file=, project=}: the project's containers.
function M.ps(opts)
  opts = opts or {}
  common("ps", opts)
  return compose(opts, { "ps" }, "ps")
end

--- docker_compose.logs{file=, project=, services={}, tail=}: the services' logs (not followed).
function M.logs(opts)
  opts = opts or {}
  common("logs", opts, { services = true, tail = true })
  local services = check_services("logs", opts.services)
  local args = { "logs" }
  if opts.tail ~= nil then
    if math.type(opts.tail) ~= "integer" or opts.tail < 0 then
      fail("logs", "`tail` must be a non-negative integer")
    end
    args[#args + 1] = "--tail"
    args[#args + 1] = tostring(opts.tail)
  end
  if #services > 0 then args[#args + 1] = "--" end
  for _, s in ipairs(services) do args[#args + 1] = s end
  return compose(opts, args, "logs")
end

return M

-- plugin.git: clone and check out repositories with a hardened git invocation.
--
-- Every git call disables repository-controlled code paths (fsmonitor, hooks, system and global
-- config, external protocol helpers) and refuses option injection: URLs, branches and paths
-- that start with "-" are rejected, and "--" separates options from operands.

local M = {
  description = "Clone repositories and check out branches with git",
  requires = { "process", "filesystem" },
  binaries = { "git" },
}

local HARDEN = {
  "-c", "core.fsmonitor=false",
  "-c", "core.hooksPath=/dev/null",
  "-c", "protocol.ext.allow=never",
  "-c", "protocol.file.allow=user",
  "-c", "core.sshCommand=false",
  "-c", "credential.helper=",
  "-c", "submodule.recurse=false",
  "-c", "advice.detachedHead=false",
}

local function check_operand(what, value)
  if type(value) ~= "string" or value == "" then
    error("git: `" .. what .. "` must be a non-empty string", 3)
  end
  if value:sub(1, 1) == "-" then
    error("policy violation [git.option]: `" .. what .. "` must not start with '-' (" .. value .. ")", 3)
  end
  if value:find("[%z\n\r]") then
    error("policy violation [git.option]: `" .. what .. "` contains a control character", 3)
  end
end

local function git(args, opts)
  local argv = {}
  for _, a in ipairs(HARDEN) do argv[#argv + 1] = a end
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  opts = opts or {}
  return process.run({ command = "git", args = argv, cwd = opts.cwd, timeout = opts.timeout, check = opts.check })
end

local function check_options(opts, allowed, call)
  if type(opts) ~= "table" then
    error("git." .. call .. ": expected a table of options", 3)
  end
  for k in pairs(opts) do
    if not allowed[k] then
      error("git." .. call .. ": unknown option `" .. tostring(k) .. "`", 3)
    end
  end
end

--- git.clone{url=, branch=, dir=".", depth=} clones `url` into `dir` (relative to the workspace).
function M.clone(opts)
  check_options(opts, { url = true, branch = true, dir = true, depth = true, timeout = true }, "clone")
  check_operand("url", opts.url)
  local dir = opts.dir or "."
  check_operand("dir", dir)
  local args = { "clone", "--no-recurse-submodules" }
  if opts.branch then
    check_operand("branch", opts.branch)
    args[#args + 1] = "--branch"
    args[#args + 1] = opts.branch
  end
  if opts.depth then
    if math.type(opts.depth) ~= "integer" or opts.depth < 1 then
      error("git.clone: `depth` must be a positive integer", 2)
    end
    args[#args + 1] = "--depth"
    args[#args + 1] = tostring(opts.depth)
  end
  args[#args + 1] = "--"
  args[#args + 1] = opts.url
  args[#args + 1] = dir
  log.info("git: cloning " .. opts.url .. (opts.branch and (" (branch " .. opts.branch .. ")") or ""))
  git(args, { timeout = opts.timeout })
  return { dir = dir, commit = M.head({ dir = dir }) }
end

--- git.checkout{ref=, dir="."} checks out a branch, tag or commit.
function M.checkout(opts)
  check_options(opts, { ref = true, dir = true }, "checkout")
  check_operand("ref", opts.ref)
  local dir = opts.dir or "."
  check_operand("dir", dir)
  git({ "checkout", "--quiet", opts.ref, "--" }, { cwd = dir })
  return M.head({ dir = dir })
end

--- git.head{dir="."} returns the commit checked out in `dir`.
function M.head(opts)
  opts = opts or {}
  local dir = opts.dir or "."
  check_operand("dir", dir)
  local out = git({ "rev-parse", "HEAD" }, { cwd = dir })
  return (out.stdout:gsub("%s+$", ""))
end

return M

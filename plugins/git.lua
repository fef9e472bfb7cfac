-- plugin.git: clone, check out, commit and push with a hardened git invocation.
--
-- Every user value is validated before git sees it, and passed where git cannot read it as an
-- option: after "--", or glued to its option with "=". Every git call disables the code paths
-- a repository controls (hooks, fsmonitor, pager, editor, ssh command, credential helpers,
-- submodule recursion); the process module adds the same settings and the policy's
-- `process.git_protocols` (`protocol.allow`) for every git child, so they hold for plain
-- `process.run{command = "git"}` too. What git still runs (filter drivers a job configured
-- itself, build tools) stays inside the job's sandbox: see docs/plugins.md.

local M = {
  description = "Clone, check out, commit and push git repositories",
  requires = { "process", "filesystem" },
  binaries = { "git" },
}

-- Settings on the command line outrank every config file, the repository's own included.
local HARDEN = {
  "--no-pager",
  "-c", "core.fsmonitor=false",
  "-c", "core.hooksPath=/dev/null",
  "-c", "core.pager=cat",
  "-c", "core.editor=false",
  "-c", "core.askPass=",
  "-c", "core.sshCommand=ssh -oBatchMode=yes",
  "-c", "credential.helper=",
  "-c", "protocol.ext.allow=never",
  "-c", "submodule.recurse=false",
  "-c", "fetch.recurseSubmodules=false",
  "-c", "push.recurseSubmodules=no",
  "-c", "advice.detachedHead=false",
  "-c", "init.defaultBranch=main",
}

local MAX_VALUE = 4096
local SCHEMES = { https = true, http = true, ssh = true, git = true, file = true }

local function fail(call, msg)
  error("git." .. call .. ": " .. msg, 3)
end

local function violation(rule, call, msg)
  error("policy violation [git." .. rule .. "]: git." .. call .. ": " .. msg, 3)
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

-- A non-empty string that git can never read as an option and that carries no control
-- characters (a newline in a value can smuggle lines into config, commit headers or logs).
local function check_value(call, what, value)
  if type(value) ~= "string" or value == "" then
    fail(call, "`" .. what .. "` must be a non-empty string")
  end
  if #value > MAX_VALUE then
    fail(call, "`" .. what .. "` is longer than " .. MAX_VALUE .. " bytes")
  end
  if value:sub(1, 1) == "-" then
    violation("option", call, "`" .. what .. "` must not start with '-' (" .. value .. ")")
  end
  if value:find("[%c]") then
    violation("option", call, "`" .. what .. "` contains a control character")
  end
end

--- Whether `name` is a valid ref name, as `git check-ref-format --branch` decides, for the
--- short names a pipeline passes (`main`, `release/1.2`, `v1.0`).
function M.valid_ref(name)
  if type(name) ~= "string" or name == "" or #name > 255 then return false end
  if name:sub(1, 1) == "-" or name == "@" then return false end
  if name:find("[%c%s~^:?*%[\\]") or name:find("..", 1, true) or name:find("@{", 1, true) then
    return false
  end
  if name:sub(1, 1) == "/" or name:sub(-1) == "/" or name:sub(-1) == "." or name:find("//", 1, true) then
    return false
  end
  for part in name:gmatch("[^/]+") do
    if part:sub(1, 1) == "." or part:sub(-5) == ".lock" then return false end
  end
  return true
end

local function check_ref(call, what, value)
  check_value(call, what, value)
  if value:sub(1, 1) == "+" or value:find(":", 1, true) then
    violation("refspec", call, "`" .. what .. "` must be a plain ref name, not a refspec (" .. value .. ")")
  end
  if not M.valid_ref(value) then
    violation("ref", call, "`" .. what .. "` is not a valid ref name (" .. value .. "; see git check-ref-format)")
  end
end

-- Repository URLs: https, http, ssh, git and file URLs, `user@host:path`, and local paths.
-- Remote-helper transports (`ext::<command>` runs a command; any `<helper>::<address>`) are
-- refused, as are hosts that start with '-' (ssh would read them as options).
local function check_url(call, url)
  check_value(call, "url", url)
  if url:find("^[%w+.%-]+::") then
    violation("url", call, "remote-helper transports (`" .. url:match("^[%w+.%-]+") ..
      "::`) are refused; `ext::` would run a command")
  end
  local scheme, rest = url:match("^(%a[%w+.%-]*)://(.*)$")
  if scheme then
    scheme = scheme:lower()
    if not SCHEMES[scheme] then
      violation("url", call, "the `" .. scheme .. "://` transport is refused (https, http, ssh, git, file)")
    end
    local host = rest:match("^[^/]*"):gsub("^.*@", "")
    if host:sub(1, 1) == "-" then
      violation("url", call, "the host must not start with '-'")
    end
    if url:find("^[^/]*://[^/]*:[^/]*@") then
      violation("url", call, "credentials in the URL are refused; use a credential the runner provides")
    end
    return
  end
  local host = url:match("^[^/:]*@([^/:]*):") or url:match("^([^/:]+):")
  if host and host:sub(1, 1) == "-" then
    violation("url", call, "the host must not start with '-'")
  end
end

-- A directory relative to the workspace (the process module resolves and jails it).
local function check_dir(call, dir)
  check_value(call, "dir", dir)
  if dir:sub(1, 1) == "/" then
    violation("option", call, "`dir` must be relative to the workspace (" .. dir .. ")")
  end
end

-- Whether git reaches `url` as a local repository (a path or file://): then it starts the
-- other side itself.
local function is_local(url)
  if url:find("^[Ff][Ii][Ll][Ee]://") then return true end
  if url:find("^%a[%w+.%-]*://") then return false end
  return not url:find("^[^/]*:")
end

local RECEIVE_PACK = "git -c core.hooksPath=/dev/null -c core.fsmonitor=false receive-pack"

local function git(args, opts)
  local argv = {}
  for _, a in ipairs(HARDEN) do argv[#argv + 1] = a end
  if opts and opts.config then
    for _, a in ipairs(opts.config) do
      argv[#argv + 1] = "-c"
      argv[#argv + 1] = a
    end
  end
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  opts = opts or {}
  return process.run({ command = "git", args = argv, cwd = opts.cwd, timeout = opts.timeout, check = opts.check })
end

local function check_timeout(call, t)
  if t ~= nil and (type(t) ~= "number" or t <= 0) then
    fail(call, "`timeout` must be a positive number of seconds")
  end
end

--- git.clone{url=, dir=".", branch=, depth=, timeout=} clones `url` into `dir` (relative to
--- the workspace); `branch` checks out that branch or tag, `depth` makes a shallow clone.
--- Returns {dir=, commit=} (`commit` is nil for an empty repository).
function M.clone(opts)
  check_options(opts, { url = true, branch = true, dir = true, depth = true, timeout = true }, "clone")
  check_url("clone", opts.url)
  local dir = opts.dir or "."
  check_dir("clone", dir)
  check_timeout("clone", opts.timeout)
  local args = { "clone", "--no-recurse-submodules", "--template=" }
  if opts.branch ~= nil then
    check_ref("clone", "branch", opts.branch)
    args[#args + 1] = "--branch=" .. opts.branch
  end
  if opts.depth ~= nil then
    if math.type(opts.depth) ~= "integer" or opts.depth < 1 then
      fail("clone", "`depth` must be a positive integer")
    end
    args[#args + 1] = "--depth=" .. tostring(opts.depth)
  end
  args[#args + 1] = "--"
  args[#args + 1] = opts.url
  args[#args + 1] = dir
  log.info("git: cloning " .. opts.url .. (opts.branch and (" (branch " .. opts.branch .. ")") or ""))
  git(args, { timeout = opts.timeout })
  -- An empty repository has no commit yet: `commit` is nil then.
  local head = git({ "rev-parse", "--verify", "--quiet", "HEAD^{commit}" }, { cwd = dir, check = false })
  local commit = head.code == 0 and (head.stdout:gsub("%s+$", "")) or nil
  return { dir = dir, commit = commit }
end

--- git.checkout{ref=, dir="."} checks out a branch, tag or commit; returns the commit.
function M.checkout(opts)
  check_options(opts, { ref = true, dir = true }, "checkout")
  check_value("checkout", "ref", opts.ref)
  if not (opts.ref:find("^%x+$") and #opts.ref >= 4) then
    check_ref("checkout", "ref", opts.ref)
  end
  local dir = opts.dir or "."
  check_dir("checkout", dir)
  -- `--end-of-options` (git >= 2.24): nothing after it is an option, and `--` marks it a ref.
  git({ "checkout", "--quiet", "--end-of-options", opts.ref, "--" }, { cwd = dir })
  return M.head({ dir = dir })
end

--- git.head{dir="."} returns the commit checked out in `dir`.
function M.head(opts)
  opts = opts or {}
  check_options(opts, { dir = true }, "head")
  local dir = opts.dir or "."
  check_dir("head", dir)
  local out = git({ "rev-parse", "--verify", "HEAD^{commit}" }, { cwd = dir })
  return (out.stdout:gsub("%s+$", ""))
end

local function check_identity(call, what, value, pattern)
  if type(value) ~= "string" or value == "" or #value > 256 then
    fail(call, "`" .. what .. "` must be a non-empty string of at most 256 bytes")
  end
  if value:find("[%c<>]") or not value:find(pattern) then
    violation("option", call, "`" .. what .. "` must not contain control characters or '<' '>' (" .. value .. ")")
  end
end

--- git.commit{dir=".", message=, author_name=, author_email=, all=false, allow_empty=false}
--- records a commit of what is staged (with `all`, of every tracked change) and returns it.
--- The author is also the committer; it defaults to "Rivet" <rivet@localhost>.
function M.commit(opts)
  check_options(opts, {
    dir = true, message = true, author_name = true, author_email = true, all = true, allow_empty = true,
  }, "commit")
  local dir = opts.dir or "."
  check_dir("commit", dir)
  local message = opts.message
  if type(message) ~= "string" or message:find("^%s*$") then
    fail("commit", "`message` must be a non-empty string")
  end
  if #message > 65536 or message:find("%z") then
    fail("commit", "`message` must be at most 64 KiB of text without NUL")
  end
  local name = opts.author_name or "Rivet"
  local email = opts.author_email or "rivet@localhost"
  check_identity("commit", "author_name", name, "%S")
  check_identity("commit", "author_email", email, "^[^%s]+$")
  if email:sub(1, 1) == "-" then
    violation("option", "commit", "`author_email` must not start with '-'")
  end
  for _, flag in ipairs({ "all", "allow_empty" }) do
    if opts[flag] ~= nil and type(opts[flag]) ~= "boolean" then
      fail("commit", "`" .. flag .. "` must be a boolean")
    end
  end
  local args = { "commit", "--quiet", "--no-verify", "--no-edit", "--message=" .. message }
  if opts.all then args[#args + 1] = "--all" end
  if opts.allow_empty then args[#args + 1] = "--allow-empty" end
  -- Identity through -c: one argument each, never parsed as an option.
  git(args, { cwd = dir, config = { "user.name=" .. name, "user.email=" .. email } })
  return M.head({ dir = dir })
end

--- git.push{dir=".", remote="origin", branch=, force=false, timeout=} pushes the local
--- `branch` (default: the current branch) to the branch of the same name on `remote` (a
--- configured remote name or a URL). A force push (`--force`) happens only with
--- `force = true`. Refspecs (`src:dst`, `+ref`) are refused: the branch is the refspec.
function M.push(opts)
  check_options(opts, { dir = true, remote = true, branch = true, force = true, timeout = true }, "push")
  local dir = opts.dir or "."
  check_dir("push", dir)
  check_timeout("push", opts.timeout)
  if opts.branch ~= nil then check_ref("push", "branch", opts.branch) end
  if opts.force ~= nil and type(opts.force) ~= "boolean" then
    fail("push", "`force` must be a boolean")
  end
  local remote = opts.remote or "origin"
  check_value("push", "remote", remote)
  local url = remote
  if remote:find("^[%w._-]+$") and not remote:find("^%.") then
    -- A configured remote: its URL is checked like one given directly (a repository's config
    -- could name an `ext::` URL).
    local r = git({ "remote", "get-url", "--", remote }, { cwd = dir, check = false })
    if r.code ~= 0 then
      fail("push", "there is no remote named `" .. remote .. "` in " .. dir)
    end
    url = (r.stdout:gsub("%s+$", ""))
  end
  check_url("push", url)
  local branch = opts.branch
  if branch == nil then
    local out = git({ "symbolic-ref", "--quiet", "--short", "HEAD" }, { cwd = dir, check = false })
    if out.code ~= 0 then
      fail("push", "HEAD is detached: give `branch`")
    end
    branch = (out.stdout:gsub("%s+$", ""))
  end
  check_ref("push", "branch", branch)
  local args = { "push", "--porcelain", "--no-verify", "--no-recurse-submodules" }
  if opts.force then args[#args + 1] = "--force" end
  if is_local(url) then
    -- git clears `-c` settings and GIT_CONFIG_* for the receive-pack it starts in a local
    -- repository, whose own hooks would then run: restate them on its command line.
    args[#args + 1] = "--receive-pack=" .. RECEIVE_PACK
  end
  args[#args + 1] = "--"
  args[#args + 1] = remote
  args[#args + 1] = "refs/heads/" .. branch .. ":refs/heads/" .. branch
  log.info("git: pushing " .. branch .. (opts.force and " (force)" or ""))
  git(args, { cwd = dir, timeout = opts.timeout })
  return { remote = remote, branch = branch, commit = M.head({ dir = dir }) }
end

return M

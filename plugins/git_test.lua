-- Tests of plugin.git, run by `rivet plugin test plugins/git.lua`. Each test runs in its own
-- sandbox worker and fresh workspace, and builds the repositories it needs there with plain
-- git (the job has no network, so every remote is a local path).

local function sh_git(cwd, ...)
  return process.run({
    command = "git", cwd = cwd,
    args = { "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main", ... },
  })
end

-- An origin repository with `main` (two commits) and `dev` (one more, adding dev.txt).
local function origin()
  filesystem.mkdir("origin")
  sh_git("origin", "init", "-q")
  filesystem.write("origin/a.txt", "one\n")
  sh_git("origin", "add", "a.txt")
  sh_git("origin", "commit", "-q", "-m", "one")
  filesystem.write("origin/a.txt", "two\n")
  sh_git("origin", "commit", "-q", "-am", "two")
  sh_git("origin", "checkout", "-q", "-b", "dev")
  filesystem.write("origin/dev.txt", "dev\n")
  sh_git("origin", "add", "dev.txt")
  sh_git("origin", "commit", "-q", "-m", "three")
  sh_git("origin", "checkout", "-q", "main")
end

local function count(dir)
  return tonumber((sh_git(dir, "rev-list", "--count", "HEAD").stdout:gsub("%s+", "")))
end

return {
  requires = { "process", "filesystem" },
  tests = {
    ["clone checks out the default branch and returns its commit"] = function(t)
      origin()
      local r = git.clone({ url = "origin", dir = "src" })
      t.eq(r.dir, "src")
      t.eq(#r.commit, 40, "commit id length")
      t.eq(r.commit, git.head({ dir = "src" }))
      t.eq(filesystem.read("src/a.txt"), "two\n")
      t.ok(not filesystem.exists("src/dev.txt"), "dev.txt is only on dev")
    end,

    ["clone honours branch"] = function(t)
      origin()
      git.clone({ url = "origin", dir = "src", branch = "dev" })
      t.eq(filesystem.read("src/dev.txt"), "dev\n")
      t.eq(sh_git("src", "rev-parse", "--abbrev-ref", "HEAD").stdout, "dev\n")
    end,

    ["clone honours depth"] = function(t)
      origin()
      -- A local path would be hard-linked whole; file:// goes through the transport, which
      -- honours --depth.
      local url = "file://" .. env.get("RIVET_WORKSPACE") .. "/origin"
      git.clone({ url = url, dir = "shallow", depth = 1 })
      t.eq(count("shallow"), 1, "commits in a depth-1 clone")
      t.eq(sh_git("shallow", "rev-parse", "--is-shallow-repository").stdout, "true\n")
      git.clone({ url = url, dir = "full" })
      t.eq(count("full"), 2, "commits in a full clone")
    end,

    ["clone of a missing branch fails"] = function(t)
      origin()
      t.raises(function() git.clone({ url = "origin", dir = "src", branch = "nope" }) end,
        "process `git` exited with code 128")
    end,

    ["clone validates its arguments"] = function(t)
      t.raises(function() git.clone({ url = "origin", depth = 0 }) end, "`depth` must be a positive integer")
      t.raises(function() git.clone({ url = "origin", depth = 2.5 }) end, "`depth` must be a positive integer")
      t.raises(function() git.clone({ url = "origin", branch = "-x" }) end, "policy violation [git.option]")
      t.raises(function() git.clone({ url = "origin", branch = "a..b" }) end, "policy violation [git.ref]")
      t.raises(function() git.clone({ url = "origin", branch = "x\1" }) end, "policy violation [git.option]")
      t.raises(function() git.clone({ url = "ext::sh -c id" }) end, "policy violation [git.url]")
      t.raises(function() git.clone({ url = "-oProxyCommand=id" }) end, "policy violation [git.option]")
      t.raises(function() git.clone({ url = "origin", depht = 1 }) end, "unknown option `depht`")
      t.raises(function() git.clone("origin") end, "expected a table of options")
    end,

    ["valid_ref follows git check-ref-format"] = function(t)
      for _, good in ipairs({ "main", "release/1.2", "v1.0", "feature/a-b_c", "a.b" }) do
        t.ok(git.valid_ref(good), good)
      end
      for _, bad in ipairs({ "", "-x", "a..b", "a b", "a:b", "a~1", "a^", "a?", "a*", "a[", "a\\b",
        "/a", "a/", "a//b", "a.", ".a", "a/.b", "a.lock", "a@{1}", "@", "a\127" }) do
        t.ok(not git.valid_ref(bad), "refused: " .. bad)
      end
    end,

    ["checkout switches branches and returns the commit"] = function(t)
      origin()
      git.clone({ url = "origin", dir = "src" })
      sh_git("src", "branch", "dev", "origin/dev")
      local c = git.checkout({ ref = "dev", dir = "src" })
      t.eq(c, git.head({ dir = "src" }))
      t.ok(filesystem.exists("src/dev.txt"), "dev.txt after checkout")
      local main = git.checkout({ ref = "main", dir = "src" })
      t.ok(main ~= c, "main and dev differ")
      git.checkout({ ref = c:sub(1, 12), dir = "src" })
      t.eq(git.head({ dir = "src" }), c, "checkout by abbreviated commit id")
    end,

    ["commit records staged or all changes with the given author"] = function(t)
      origin()
      git.clone({ url = "origin", dir = "src" })
      filesystem.write("src/a.txt", "changed\n")
      t.raises(function() git.commit({ dir = "src", message = "nothing staged" }) end, "exited with code 1")
      local c = git.commit({ dir = "src", message = "change a\n\nbody line", all = true,
        author_name = "Ada Lovelace", author_email = "ada@example.com" })
      t.eq(c, git.head({ dir = "src" }))
      local log = sh_git("src", "log", "-1", "--format=%an|%ae|%cn|%ce|%B").stdout
      t.eq(log, "Ada Lovelace|ada@example.com|Ada Lovelace|ada@example.com|change a\n\nbody line\n\n")
      filesystem.write("src/new.txt", "new\n")
      sh_git("src", "add", "new.txt")
      git.commit({ dir = "src", message = "add new" })
      t.eq(sh_git("src", "log", "-1", "--format=%an <%ae>").stdout, "Rivet <rivet@localhost>\n", "default author")
      local empty = git.commit({ dir = "src", message = "empty", allow_empty = true })
      t.eq(count("src"), 5)
      t.eq(empty, git.head({ dir = "src" }))
    end,

    ["commit validates its arguments"] = function(t)
      t.raises(function() git.commit({ message = "" }) end, "`message` must be a non-empty string")
      t.raises(function() git.commit({ message = "m", author_email = "a <b>" }) end, "policy violation [git.option]")
      t.raises(function() git.commit({ message = "m", author_name = "x\ny" }) end, "policy violation [git.option]")
      t.raises(function() git.commit({ message = "m", all = "yes" }) end, "`all` must be a boolean")
      t.raises(function() git.commit({ message = "m", amend = true }) end, "unknown option `amend`")
    end,

    ["push sends the branch to origin; force only when asked"] = function(t)
      origin()
      sh_git(".", "init", "-q", "--bare", "remote.git")
      git.clone({ url = "remote.git", dir = "a" })
      filesystem.write("a/f.txt", "1\n")
      sh_git("a", "add", "f.txt")
      local c1 = git.commit({ dir = "a", message = "first" })
      local r = git.push({ dir = "a", branch = "main" })
      t.eq(r.commit, c1)
      t.eq(r.remote, "origin")
      t.eq(sh_git("remote.git", "rev-parse", "main").stdout, c1 .. "\n", "remote main after push")
      -- A diverging history is refused without force, accepted with it.
      filesystem.write("a/f.txt", "2\n")
      local c2 = git.commit({ dir = "a", message = "second", all = true })
      git.push({ dir = "a" })
      sh_git("a", "reset", "-q", "--hard", c1)
      filesystem.write("a/f.txt", "3\n")
      local c3 = git.commit({ dir = "a", message = "rewritten", all = true })
      t.raises(function() git.push({ dir = "a", branch = "main" }) end, "exited with code 1")
      t.eq(sh_git("remote.git", "rev-parse", "main").stdout, c2 .. "\n", "remote unchanged")
      git.push({ dir = "a", branch = "main", force = true })
      t.eq(sh_git("remote.git", "rev-parse", "main").stdout, c3 .. "\n", "remote after a forced push")
    end,

    ["push to a URL and validation"] = function(t)
      sh_git(".", "init", "-q", "--bare", "other.git")
      filesystem.mkdir("w")
      sh_git("w", "init", "-q")
      git.commit({ dir = "w", message = "root", allow_empty = true })
      local r = git.push({ dir = "w", remote = "../other.git" })
      t.eq(r.branch, "main", "the current branch by default")
      t.eq(sh_git("other.git", "rev-parse", "main").stdout, r.commit .. "\n")
      t.raises(function() git.push({ dir = "w", remote = "nope" }) end, "there is no remote named `nope`")
      t.raises(function() git.push({ dir = "w", branch = "main:other" }) end, "policy violation [git.refspec]")
      t.raises(function() git.push({ dir = "w", branch = "+main" }) end, "policy violation [git.refspec]")
      t.raises(function() git.push({ dir = "w", remote = "--exec=id" }) end, "policy violation [git.option]")
      sh_git("w", "remote", "add", "evil", "ext::sh -c id")
      t.raises(function() git.push({ dir = "w", remote = "evil" }) end, "policy violation [git.url]")
    end,
  },
}

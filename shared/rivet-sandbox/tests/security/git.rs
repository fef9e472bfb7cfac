//! The git plugin's hardening (PROC-06 and the git notes of `defences.md`): repository hooks
//! and fsmonitor never run, no user value can become a git option, remote-helper transports
//! are refused, and git children use only the policy's transports. Each test runs real git
//! against repositories the job creates in its own workspace.

use crate::helpers::*;
use std::path::Path;

/// Lua that builds a repository `repo` with one commit on `main`, and a bare `remote.git` it
/// pushes to, using plain git (identity passed with `-c`).
const REPO: &str = r#"local function sh_git(cwd, ...)
  return process.run{ command = "git", cwd = cwd,
    args = {"-c", "user.name=t", "-c", "user.email=t@example.com", ...} }
end
filesystem.mkdir("repo")
sh_git("repo", "init", "-q", "-b", "main")
filesystem.write("repo/a.txt", "a\n")
sh_git("repo", "add", "a.txt")
sh_git("repo", "commit", "-q", "-m", "init")
sh_git(".", "init", "-q", "--bare", "remote.git")
sh_git("repo", "remote", "add", "origin", "../remote.git")
"#;

/// A hook script that leaves `marker` in the workspace and tries the host trap and the canary.
fn hook(ws: &Path, marker: &str, trap: &Path, canary: &Canary) -> String {
    format!(
        "#!/bin/sh\ntouch {}/{marker}\ntouch {}\necho pwned >> {}\n",
        ws.display(),
        trap.display(),
        canary.file.display()
    )
}

/// Installs `body` as the executable hook `name` in the git directory `git_dir`.
fn install_hook(git_dir: &str, name: &str, body: &str) -> String {
    format!(
        "filesystem.write({path}, {body})\nprocess.run{{ command = \"chmod\", args = {{\"+x\", {path}}} }}\n",
        path = lua_str(&format!("{git_dir}/hooks/{name}")),
        body = lua_str(body)
    )
}

const HOOKS: [&str; 8] = [
    "pre-commit",
    "prepare-commit-msg",
    "commit-msg",
    "post-commit",
    "post-checkout",
    "reference-transaction",
    "pre-push",
    "post-index-change",
];
const REMOTE_HOOKS: [&str; 4] = ["pre-receive", "update", "post-receive", "post-update"];

#[test]
fn proc_06_git_plugin_runs_no_repository_hooks_or_fsmonitor() {
    let policy = policy(&["chmod"]);
    let canary = Canary::new("git-hooks");
    let pwn = trap("git-hooks", "hook");
    let ws = workspace("git-hooks");
    let mut script = String::from(REPO);
    for name in HOOKS {
        script.push_str(&install_hook(
            "repo/.git",
            name,
            &hook(ws.path(), &format!("ran-{name}"), &pwn, &canary),
        ));
    }
    for name in REMOTE_HOOKS {
        script.push_str(&install_hook(
            "remote.git",
            name,
            &hook(ws.path(), &format!("ran-{name}"), &pwn, &canary),
        ));
    }
    // The repository's own configuration asks for an fsmonitor and a hooks directory of its
    // own, both pointing at the payload.
    script.push_str(&install_hook(
        "repo/.git",
        "fsmon",
        &hook(ws.path(), "ran-fsmonitor", &pwn, &canary),
    ));
    script.push_str(&format!(
        "filesystem.append(\"repo/.git/config\", {})\n",
        lua_str(&format!(
            "[core]\n\tfsmonitor = {ws}/repo/.git/hooks/fsmon\n\thooksPath = {ws}/repo/.git/hooks\n",
            ws = ws.path().display()
        ))
    ));
    script.push_str(
        r#"filesystem.write("repo/a.txt", "changed\n")
local c1 = git.commit{ dir = "repo", message = "one", all = true }
git.checkout{ ref = "main", dir = "repo" }
process.run{ command = "git", cwd = "repo", args = {"branch", "dev"} }
git.checkout{ ref = "dev", dir = "repo" }
git.checkout{ ref = "main", dir = "repo" }
local pushed = git.push{ dir = "repo", branch = "main" }
assert(pushed.commit == c1, "pushed commit")
-- Plain git through the process module gets the same settings from the environment.
process.run{ command = "git", cwd = "repo", args = {"status"} }
process.run{ command = "git", cwd = "repo", args = {"-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "--allow-empty", "-m", "raw"} }
log.info("GIT-DONE")"#,
    );
    let job = run_job(
        &policy,
        &pipeline_requiring(&["plugin.git"], &script),
        ws.path(),
    );
    assert_succeeded(&job, "hooks and fsmonitor in the repository");
    assert!(job
        .lines(rivet_sandbox::events::Source::Script)
        .contains(&"GIT-DONE"));
    let mut markers: Vec<std::path::PathBuf> = HOOKS
        .iter()
        .chain(REMOTE_HOOKS.iter())
        .map(|h| ws.path().join(format!("ran-{h}")))
        .collect();
    markers.push(ws.path().join("ran-fsmonitor"));
    markers.push(pwn.clone());
    let refs: Vec<&Path> = markers.iter().map(|p| p.as_path()).collect();
    assert_absent(&refs, "a repository hook or fsmonitor ran");
    // The push really reached the remote (so pre-push and the receive hooks had their chance).
    let out = std::process::Command::new("git")
        .args(["--git-dir", "remote.git", "log", "--format=%s", "main"])
        .current_dir(ws.path())
        .output()
        .expect("git runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "one\ninit");
    canary.assert_intact("git hooks");
    assert_follow_up(&policy);
}

/// Runs `call` (a git plugin call) after building the repository, and expects `rule`.
fn injection_case(policy: &rivet_core::Policy, ws: &Path, call: &str) -> Job {
    let script = format!("{REPO}{call}");
    run_job(policy, &pipeline_requiring(&["plugin.git"], &script), ws)
}

#[test]
fn git_plugin_refuses_option_injection_and_dangerous_transports() {
    let policy = policy(&[]);
    let canary = Canary::new("git-inject");
    let pwn = trap("git-inject", "option");
    let p = pwn.display().to_string();
    let cases: Vec<(&str, String, &str)> = vec![
        ("url is an option", format!("git.clone{{ url = \"--upload-pack=touch {p}\", dir = \"x\" }}"), "git.option"),
        ("url is a short option", format!("git.clone{{ url = \"-utouch {p}\", dir = \"x\" }}"), "git.option"),
        ("ext:: transport", format!("git.clone{{ url = \"ext::sh -c touch% {p}\", dir = \"x\" }}"), "git.url"),
        ("fd:: transport", "git.clone{ url = \"fd::17\", dir = \"x\" }".into(), "git.url"),
        ("file:: helper", "git.clone{ url = \"file::repo\", dir = \"x\" }".into(), "git.url"),
        ("ssh host is an option", format!("git.clone{{ url = \"ssh://-oProxyCommand=touch%20{p}/x\", dir = \"x\" }}"), "git.url"),
        ("scp-like host is an option", "git.clone{ url = \"git@-oProxyCommand=id:x\", dir = \"x\" }".into(), "git.url"),
        ("unknown scheme", "git.clone{ url = \"ftp://example.com/x.git\", dir = \"x\" }".into(), "git.url"),
        ("credentials in the url", "git.clone{ url = \"https://u:pw@example.com/x.git\", dir = \"x\" }".into(), "git.url"),
        ("branch is an option", format!("git.clone{{ url = \"repo\", dir = \"x\", branch = \"--upload-pack=touch {p}\" }}"), "git.option"),
        ("branch with ..", "git.clone{ url = \"repo\", dir = \"x\", branch = \"a..b\" }".into(), "git.ref"),
        ("branch with a space", "git.clone{ url = \"repo\", dir = \"x\", branch = \"a b\" }".into(), "git.ref"),
        ("branch ending .lock", "git.clone{ url = \"repo\", dir = \"x\", branch = \"main.lock\" }".into(), "git.ref"),
        ("branch with a newline", "git.clone{ url = \"repo\", dir = \"x\", branch = \"main\\nx\" }".into(), "git.option"),
        ("dir is an option", format!("git.clone{{ url = \"repo\", dir = \"--template={p}\" }}"), "git.option"),
        ("dir is absolute", "git.clone{ url = \"repo\", dir = \"/etc\" }".into(), "git.option"),
        ("checkout ref is an option", "git.checkout{ dir = \"repo\", ref = \"--orphan=x\" }".into(), "git.option"),
        ("checkout ref is a path trick", "git.checkout{ dir = \"repo\", ref = \"HEAD:a.txt\" }".into(), "git.refspec"),
        ("push refspec", "git.push{ dir = \"repo\", branch = \"main:refs/heads/other\" }".into(), "git.refspec"),
        ("push forced refspec", "git.push{ dir = \"repo\", branch = \"+main\" }".into(), "git.refspec"),
        ("push remote is an option", format!("git.push{{ dir = \"repo\", remote = \"--receive-pack=touch {p}\", branch = \"main\" }}"), "git.option"),
        ("push to ext::", format!("git.push{{ dir = \"repo\", remote = \"ext::sh -c touch% {p}\", branch = \"main\" }}"), "git.url"),
        ("author email is an option", "git.commit{ dir = \"repo\", message = \"m\", allow_empty = true, author_email = \"-x\" }".into(), "git.option"),
        ("author name forges a header", "git.commit{ dir = \"repo\", message = \"m\", allow_empty = true, author_name = \"a>\\ncommitter x\" }".into(), "git.option"),
    ];
    for (label, call, rule) in cases {
        let ws = workspace("git-inject");
        let job = injection_case(&policy, ws.path(), &call);
        assert_rule(&job, rule, label);
        assert_absent(&[&pwn, &ws.path().join("x")], label);
    }

    // Bad values that are not attacks get clear errors.
    let errors: Vec<(&str, &str, &str)> = vec![
        (
            "depth 0",
            "git.clone{ url = \"repo\", dir = \"x\", depth = 0 }",
            "`depth` must be a positive integer",
        ),
        (
            "depth as text",
            "git.clone{ url = \"repo\", dir = \"x\", depth = \"1\" }",
            "`depth` must be a positive integer",
        ),
        (
            "fractional depth",
            "git.clone{ url = \"repo\", dir = \"x\", depth = 1.5 }",
            "`depth` must be a positive integer",
        ),
        (
            "no url",
            "git.clone{ dir = \"x\" }",
            "`url` must be a non-empty string",
        ),
        (
            "unknown option",
            "git.clone{ url = \"repo\", recursive = true }",
            "unknown option `recursive`",
        ),
        (
            "empty message",
            "git.commit{ dir = \"repo\", message = \"  \" }",
            "`message` must be a non-empty string",
        ),
        (
            "force not a boolean",
            "git.push{ dir = \"repo\", branch = \"main\", force = \"yes\" }",
            "`force` must be a boolean",
        ),
    ];
    for (label, call, needle) in errors {
        let ws = workspace("git-inject");
        let job = injection_case(&policy, ws.path(), call);
        assert_failed_with(&job, needle, label);
    }

    // A message that looks like an option is just a message.
    let ws = workspace("git-inject");
    let job = injection_case(
        &policy,
        ws.path(),
        "git.commit{ dir = \"repo\", message = \"--amend\", allow_empty = true }\nlocal r = process.run{ command = \"git\", cwd = \"repo\", args = {\"log\", \"-1\", \"--format=%s|%an|%ae\"} }\nassert(r.stdout == \"--amend|Rivet|rivet@localhost\\n\", r.stdout)",
    );
    assert_succeeded(&job, "a message starting with --");
    canary.assert_intact("git option injection");
    assert_follow_up(&policy);
}

#[test]
fn git_children_use_only_the_policys_transports() {
    let canary = Canary::new("git-proto");
    let pwn = trap("git-proto", "ext");
    // Plain git through the process module: ext:: is refused by the environment's protocol
    // settings (and git's own default), whatever the command line asks.
    let policy = policy(&[]);
    let ws = workspace("git-proto");
    let job = run_job(
        &policy,
        &pipeline(&format!(
            "local r = process.run{{ command = \"git\", check = false, args = {{\"clone\", \"ext::sh -c touch% {}\", \"x\"}} }}\nassert(r.code ~= 0)\nassert(r.stderr:find(\"transport 'ext' not allowed\", 1, true), r.stderr)",
            pwn.display()
        )),
        ws.path(),
    );
    assert_succeeded(&job, "ext:: through plain git");
    assert_absent(&[&pwn], "ext:: through plain git");

    // Without `file` in process.git_protocols, local clones are refused by git itself: the
    // setting reaches every git child (it would be allowed by git's default).
    let mut no_file = policy.clone();
    no_file.process.git_protocols = vec!["https".into()];
    let ws = workspace("git-proto");
    let job = run_job(
        &no_file,
        &pipeline_requiring(
            &["plugin.git"],
            &format!("{REPO}git.clone{{ url = \"repo\", dir = \"copy\" }}"),
        ),
        ws.path(),
    );
    assert_failed_with(
        &job,
        "process `git` exited with code 128",
        "file transport refused",
    );
    assert!(
        job.lines(rivet_sandbox::events::Source::Stderr)
            .iter()
            .any(|l| l.contains("transport 'file' not allowed")),
        "git should name the refused transport\n{}",
        job.describe()
    );
    // With the default policy the same clone works.
    let ws = workspace("git-proto");
    let job = run_job(
        &policy,
        &pipeline_requiring(
            &["plugin.git"],
            &format!("{REPO}git.clone{{ url = \"repo\", dir = \"copy\" }}"),
        ),
        ws.path(),
    );
    assert_succeeded(&job, "local clone with the default policy");
    canary.assert_intact("git transports");
    assert_follow_up(&policy);
}

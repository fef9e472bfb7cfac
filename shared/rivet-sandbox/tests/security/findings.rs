//! Regression tests for what fuzzing found (`scripts/fuzz.sh`, `tests/fuzz`). Append-only.

use crate::helpers::*;

/// FUZZ-01: `string.rep` builds megabytes in C within one VM instruction, so a loop of them
/// ran for seconds between two hook calls and overshot the deadline ~14 times (6.9 s for a
/// 500 ms definition limit). `string.rep` now charges its output to the budget and checks the
/// deadline first, so the VM itself stops the loop, in a stage and in a coroutine alike.
#[test]
fn fuzz_01_string_rep_loops_are_charged_to_the_budget() {
    let policy = policy(&[]);
    let canary = Canary::new("fuzz01");
    for (label, script) in [
        (
            "main thread",
            "while true do local s = string.rep('a', 1e7) end",
        ),
        (
            "coroutine",
            "coroutine.wrap(function() while true do string.rep('a', 1e7) end end)()",
        ),
        (
            "method call with a separator",
            "while true do local s = ('ab'):rep(3e6, 'xy') end",
        ),
    ] {
        let ws = workspace("fuzz01");
        let job = run_job(&policy, &pipeline(script), ws.path());
        assert_vm_stopped_loop(&job, &policy, label);
    }
    // Ordinary use still works and costs next to nothing.
    let ws = workspace("fuzz01");
    let job = run_job(
        &policy,
        &pipeline("assert(string.rep('-', 3) == '---' and ('ab'):rep(2, ',') == 'ab,ab' and string.rep(5, 2) == '55' and string.rep('x', 0) == '')"),
        ws.path(),
    );
    assert_succeeded(&job, "ordinary string.rep");
    canary.assert_intact("FUZZ-01");
    assert_follow_up(&policy);
}

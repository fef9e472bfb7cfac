//! The fuzz targets of `rivet_sandbox::fuzzing` on stable Rust: each runs over a corpus (the
//! example pipelines, the plugins, attack snippets, past findings), then over mutated and
//! random inputs for a bounded time (`RIVET_FUZZ_SECONDS`, default 5 per target). The inputs
//! are deterministic per seed (`RIVET_FUZZ_SEED`), so a failure names a reproducible input.
//! `scripts/fuzz.sh` runs the same functions under cargo-fuzz (coverage-guided).

use rivet_sandbox::fuzzing;
use std::path::Path;
use std::time::{Duration, Instant};

/// Inputs that once broke a target, or that stress a known edge; kept forever.
const REGRESSIONS: &[&str] = &[
    // Deep nesting in source text (API-05): the compiler's own limit, reported as a problem.
    "return ((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((1))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))",
    "while true do end",
    "while true do pcall(function() while true do end end) end",
    "local t = {} for i = 1, 1e9 do t[i] = i end",
    "local s = 'x' while true do s = s .. s end",
    "setmetatable({}, {__gc = function() while true do end end}) collectgarbage()",
    "return setmetatable({}, {__index = function() error('meta') end})",
    "return { name = setmetatable({}, {__tostring = function() while true do end end}), stages = {} }",
    "local t = {} t.t = t return { name = 'x', stages = { t } }",
    "return { name = 'n', requires = {'plugin.nope', 'label:', 'process', 42}, stages = {{name = 's', script = 1}} }",
    "return { name = 'n', inputs = { a = { type = 'number', default = 0/0 } }, stages = {{name = 's', script = function() end}} }",
    "return { name = 'n', stages = {{name = 's', script = function() end, timeout = -1, env = {PATH = '/x'}}} }",
    "return { name = 'n', retry = { attempts = 1e308 }, timeout = 1e308, stages = {{name = 's', script = function() end}} }",
    "error(setmetatable({}, {__tostring = function() return 'x' end}))",
    "error()",
    "coroutine.wrap(function() while true do end end)()",
    "return load(string.rep('a', 100))",
    "return string.rep('x', 2^31)",
    // FUZZ-01: seconds between hook calls, 14x past the deadline, before string.rep was charged.
    "coroutine.wrap(function() while true do string.rep('a',1e7)end end)()",
    "while true do local s = ('ab'):rep(3e6, 'xy') end",
];

/// Lua fragments the mutator splices in.
const TOKENS: &[&str] = &[
    "return",
    "{",
    "}",
    "(",
    ")",
    "function()",
    "end",
    "name",
    "=",
    "stages",
    "script",
    "requires",
    "inputs",
    "'",
    "\"",
    "[[",
    "]]",
    ",",
    ";",
    "local",
    "while true do",
    "pcall(",
    "setmetatable(",
    "{__index=",
    "nil",
    "0/0",
    "1e308",
    "-",
    "..",
    "#",
    "string.rep('a',1e7)",
    "--",
    "\n",
    "\0",
    "{name='s',script=function() end}",
    "type='number'",
    "default=",
    "condition=",
    "timeout=",
];

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    for _ in 0..=rng.below(8) {
        let at = rng.below(out.len() + 1);
        match rng.below(4) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            1 if !out.is_empty() => {
                let end = (at + rng.below(32)).min(out.len());
                out.drain(at..end);
            }
            _ => {
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                out.splice(at..at, t.iter().copied());
            }
        }
    }
    out
}

fn seconds() -> Duration {
    let s = std::env::var("RIVET_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(5);
    Duration::from_secs(s)
}

fn seed() -> u64 {
    std::env::var("RIVET_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0x5eed_1234_abcd_0001)
        | 1
}

fn corpus() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut out: Vec<Vec<u8>> = REGRESSIONS.iter().map(|s| s.as_bytes().to_vec()).collect();
    for dir in ["examples", "plugins"] {
        let entries = std::fs::read_dir(root.join(dir)).expect("reading the corpus directory");
        for e in entries {
            let path = e.expect("a directory entry").path();
            if path.extension().and_then(|x| x.to_str()) == Some("lua") {
                out.push(std::fs::read(&path).expect("reading a corpus file"));
            }
        }
    }
    out
}

/// Runs `target` on `input`, turning a panic into a failure that shows the input.
fn check(target: fn(&[u8]), name: &str, input: &[u8]) {
    if std::panic::catch_unwind(|| target(input)).is_err() {
        panic!(
            "fuzz target `{name}` failed on input {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

fn run(target: fn(&[u8]), name: &str, random_max: usize) -> usize {
    let corpus = corpus();
    for input in &corpus {
        check(target, name, input);
    }
    let mut rng = Rng(seed());
    let deadline = Instant::now() + seconds();
    let mut runs = corpus.len();
    while Instant::now() < deadline {
        let input = if rng.below(3) == 0 {
            rng.bytes(random_max)
        } else {
            let base = rng.below(corpus.len());
            mutate(&mut rng, &corpus[base])
        };
        check(target, name, &input);
        runs += 1;
    }
    runs
}

#[test]
fn definition_checker_survives_arbitrary_source() {
    let runs = run(fuzzing::definition, "definition", 512);
    assert!(runs > 100, "only {runs} inputs ran");
}

#[test]
fn argument_conversion_survives_arbitrary_values() {
    // Convert inputs are programs of a small stack machine: the definition corpus works as
    // bytes too, and random bytes reach every op.
    let runs = run(fuzzing::convert, "convert", 4096);
    assert!(runs > 100, "only {runs} inputs ran");
}

#[test]
fn deep_values_hit_the_depth_bound_not_the_stack() {
    // 0x05 new table, then op 8 (nest) with 255*16 levels, 50 times: ~200k levels (RES-05).
    let mut input = vec![0x05];
    for _ in 0..50 {
        input.extend([0x08, 0xff]);
    }
    check(fuzzing::convert, "convert", &input);
}

//! A job's logs from the orchestrator: printed once, or followed as they arrive (polling
//! `GET /jobs/{id}/logs` with `after`, with a one-line progress indicator on a terminal while
//! nothing arrives), then how the job ended.

use super::print_json_line;
use super::table::{now_ms, printable, span, took};
use anyhow::Result;
use rivet_client::{Client, LogQuery};
use rivet_core::StageOutcome;
use rivet_protocol::http::{JobState, JobView, StageView};
use rivet_protocol::messages::LogLine;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Lines asked for per request.
const PAGE: u32 = 500;
/// The pause after lines arrived, and the first pause when none did.
const FIRST_PAUSE: Duration = Duration::from_millis(250);
/// The longest pause between two polls of an idle job.
const MAX_PAUSE: Duration = Duration::from_secs(2);
/// How often an idle job's state is fetched for the progress line.
const STATE_EVERY: Duration = Duration::from_secs(2);
/// How often the progress line is redrawn while waiting.
const FRAME: Duration = Duration::from_millis(100);

/// What to follow, and how to show it.
#[derive(Debug, Clone, Copy)]
pub struct Follow {
    /// Only this attempt; `None`: the current one, then any later attempt.
    pub attempt: Option<u32>,
    /// JSON lines instead of text.
    pub json: bool,
}

/// Prints every line of one attempt (default: the current one) that is there now.
pub async fn print_once(client: &Client, id: Uuid, attempt: Option<u32>, json: bool) -> Result<()> {
    let mut query = LogQuery {
        attempt,
        after: None,
        limit: Some(PAGE),
    };
    loop {
        let page = client.logs(id, &query).await?;
        print_lines(&page.lines, json)?;
        if (page.lines.len() as u32) < PAGE {
            return Ok(());
        }
        query.attempt = Some(page.attempt);
        query.after = page.next_after;
    }
}

/// Follows the job's logs until it ends (or, with [`Follow::attempt`], that attempt ends), and
/// returns the job as it is then, with its attempts.
pub async fn follow(client: &Client, id: Uuid, opts: Follow) -> Result<JobView> {
    let mut progress = Progress::new(!opts.json && std::io::stderr().is_terminal());
    let mut query = LogQuery {
        attempt: opts.attempt,
        after: None,
        limit: Some(PAGE),
    };
    let mut pause = FIRST_PAUSE;
    let mut state_fetched: Option<Instant> = None;
    loop {
        let page = client.logs(id, &query).await?;
        let current = page.attempt;
        query.attempt = Some(current);
        let got = page.lines.len() as u32;
        if got > 0 {
            progress.clear();
            print_lines(&page.lines, opts.json)?;
            query.after = page.next_after;
            pause = FIRST_PAUSE;
        }
        if got == PAGE {
            // More may be stored already: fetch it without waiting.
            continue;
        }
        if page.complete {
            // This attempt is over and every line of it was printed.
            let job = client.job(id).await?;
            if opts.attempt.is_none() && job.attempt > current {
                progress.clear();
                let ended = job
                    .attempts
                    .iter()
                    .find(|a| a.attempt == current)
                    .map_or("ended", |a| a.state.as_str());
                if !opts.json {
                    println!("— attempt {} (attempt {current}: {ended}) —", current + 1);
                }
                query.attempt = Some(current + 1);
                query.after = None;
                continue;
            }
            progress.clear();
            return Ok(job);
        }
        if got == 0 && progress.enabled && state_fetched.is_none_or(|t| t.elapsed() >= STATE_EVERY)
        {
            let job = client.job(id).await?;
            progress.label = status_label(&job);
            progress.since_ms = job.started_at_ms.unwrap_or(job.created_at_ms);
            state_fetched = Some(Instant::now());
        }
        progress.wait(pause).await;
        if got == 0 {
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}

/// Prints how the followed job (or attempt) ended: its stages, then the outcome. Returns the
/// exit status: 0 only when it succeeded.
pub fn print_end(job: &JobView, attempt: Option<u32>, json: bool) -> Result<i32> {
    let chosen = attempt.filter(|&n| n != job.attempt);
    let (state, outcome, started, finished) =
        match chosen.and_then(|n| job.attempts.iter().find(|a| a.attempt == n)) {
            Some(a) => (a.state, &a.outcome, a.started_at_ms, a.finished_at_ms),
            None => (
                job.state,
                &job.outcome,
                job.started_at_ms,
                job.finished_at_ms,
            ),
        };
    let code = if state == JobState::Succeeded { 0 } else { 1 };
    if json {
        print_json_line(job)?;
        return Ok(code);
    }
    let shown = chosen.unwrap_or(job.attempt);
    if let Some(a) = job.attempts.iter().find(|a| a.attempt == shown) {
        for stage in &a.stages {
            println!("{}", stage_line(stage));
        }
    }
    let took = took(started, finished);
    let what = match outcome {
        Some(o) => o.to_string(),
        None => state.as_str().to_owned(),
    };
    if state == JobState::Succeeded {
        println!("job {} succeeded in {took}", job.id);
    } else {
        eprintln!(
            "{} (job {}): {} ({took})",
            job.pipeline,
            job.id,
            printable(&what)
        );
    }
    Ok(code)
}

/// A log line as `rivet run` shows a local one: `  [stage] tag: text`.
pub fn render_line(line: &LogLine) -> String {
    let tag = match (line.source.as_str(), line.level.as_str()) {
        ("system", _) => "rivet",
        ("stderr", _) => "stderr",
        (_, "error") => "error",
        (_, "warn") => "warn",
        (_, "debug") => "debug",
        _ => "",
    };
    let stage = printable(line.stage.as_deref().unwrap_or("-")).into_owned();
    let text = printable(&line.line);
    if tag.is_empty() {
        format!("  [{stage}] {text}")
    } else {
        format!("  [{stage}] {tag}: {text}")
    }
}

/// A stage as `rivet run` reports a local one when it ends.
pub fn stage_line(stage: &StageView) -> String {
    let took = stage.duration_ms.map_or_else(|| "?".into(), span);
    let error = printable(stage.error.as_deref().unwrap_or("")).into_owned();
    let name = printable(&stage.name).into_owned();
    match stage.outcome {
        Some(StageOutcome::Succeeded) => format!("✓ {name} ({took})"),
        Some(StageOutcome::Skipped) => format!("- {name} skipped: {error}"),
        Some(StageOutcome::Failed) => format!("✗ {name} failed after {took}: {error}"),
        Some(StageOutcome::TimedOut) => format!("✗ {name} timed out after {took}: {error}"),
        None => format!("▶ {name} ({})", stage.state),
    }
}

/// What an unfinished job is doing, for the progress line.
pub fn status_label(job: &JobView) -> String {
    match job.state {
        JobState::Queued => match &job.schedulability {
            Some(s) if !s.schedulable => format!("queued — cannot be scheduled: {}", s.reason),
            _ => "queued, waiting for a runner".to_owned(),
        },
        JobState::Running => {
            let stage = job
                .attempts
                .iter()
                .find(|a| a.attempt == job.attempt)
                .and_then(|a| a.stages.iter().rev().find(|s| s.outcome.is_none()))
                .map(|s| format!(" stage `{}`", s.name))
                .unwrap_or_default();
            let runner = job
                .runner_id
                .as_deref()
                .map(|r| format!(" on {r}"))
                .unwrap_or_default();
            format!("running{stage}{runner}")
        }
        state => state.as_str().to_owned(),
    }
}

fn print_lines(lines: &[LogLine], json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for line in lines {
        if json {
            writeln!(out, "{}", serde_json::to_string(line)?)?;
        } else {
            writeln!(out, "{}", render_line(line))?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The one-line progress indicator on stderr: drawn only on a terminal, erased before anything
/// else is printed.
struct Progress {
    enabled: bool,
    shown: bool,
    frame: usize,
    label: String,
    since_ms: i64,
}

impl Progress {
    const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            shown: false,
            frame: 0,
            label: "waiting for the job".into(),
            since_ms: now_ms(),
        }
    }

    /// Waits `total`, redrawing the line meanwhile.
    async fn wait(&mut self, total: Duration) {
        if !self.enabled {
            tokio::time::sleep(total).await;
            return;
        }
        let end = Instant::now() + total;
        loop {
            self.draw();
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(FRAME)).await;
        }
    }

    fn draw(&mut self) {
        let frame = Self::FRAMES[self.frame % Self::FRAMES.len()];
        self.frame += 1;
        let mut label: String = printable(&self.label).chars().take(100).collect();
        label.push_str(&format!(" ({})", span(now_ms() - self.since_ms)));
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{frame} {label}");
        let _ = err.flush();
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.shown = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rivet_protocol::http::{AttemptView, Schedulability};

    fn line(stage: Option<&str>, level: &str, source: &str, text: &str) -> LogLine {
        LogLine {
            seq: 0,
            at_ms: 0,
            stage: stage.map(Into::into),
            level: level.into(),
            source: source.into(),
            line: text.into(),
        }
    }

    #[test]
    fn log_lines_look_like_a_local_run() {
        assert_eq!(
            render_line(&line(Some("greet"), "info", "script", "hello")),
            "  [greet] hello"
        );
        assert_eq!(
            render_line(&line(Some("test"), "info", "stderr", "FAILED")),
            "  [test] stderr: FAILED"
        );
        assert_eq!(
            render_line(&line(None, "info", "system", "sandbox: rlimits only")),
            "  [-] rivet: sandbox: rlimits only"
        );
        assert_eq!(
            render_line(&line(Some("s"), "warn", "script", "\u{1b}]52;c;evil\u{7}")),
            "  [s] warn: \\u{1b}]52;c;evil\\u{7}"
        );
    }

    fn stage(name: &str, outcome: Option<StageOutcome>, error: Option<&str>) -> StageView {
        StageView {
            index: 0,
            name: name.into(),
            state: outcome.map_or("running", |_| "ended").into(),
            outcome,
            duration_ms: outcome.map(|_| 1500),
            error: error.map(Into::into),
        }
    }

    #[test]
    fn stages_end_like_a_local_run() {
        assert_eq!(
            stage_line(&stage("a", Some(StageOutcome::Succeeded), None)),
            "✓ a (1.5s)"
        );
        assert_eq!(
            stage_line(&stage("b", Some(StageOutcome::Failed), Some("exit 1"))),
            "✗ b failed after 1.5s: exit 1"
        );
        assert_eq!(
            stage_line(&stage(
                "c",
                Some(StageOutcome::Skipped),
                Some("an earlier stage failed")
            )),
            "- c skipped: an earlier stage failed"
        );
        assert_eq!(stage_line(&stage("d", None, None)), "▶ d (running)");
    }

    fn job(state: JobState) -> JobView {
        JobView {
            id: Uuid::nil(),
            project: "default".into(),
            pipeline: "p".into(),
            pipeline_version: 1,
            state,
            attempt: 1,
            inputs: Default::default(),
            class_key: "process".into(),
            requires: vec!["process".into()],
            created_at_ms: 0,
            started_at_ms: None,
            finished_at_ms: None,
            outcome: None,
            runner_id: None,
            schedulability: None,
            attempts: Vec::new(),
        }
    }

    #[test]
    fn the_progress_line_says_why_a_job_waits() {
        let mut queued = job(JobState::Queued);
        assert_eq!(status_label(&queued), "queued, waiting for a runner");
        queued.schedulability = Some(Schedulability {
            schedulable: false,
            missing: vec!["process".into()],
            reason: "no runner is online".into(),
        });
        assert_eq!(
            status_label(&queued),
            "queued — cannot be scheduled: no runner is online"
        );
        let mut running = job(JobState::Running);
        running.runner_id = Some("runner-a".into());
        running.attempts = vec![AttemptView {
            attempt: 1,
            runner_id: Some("runner-a".into()),
            state: JobState::Running,
            outcome: None,
            started_at_ms: Some(0),
            finished_at_ms: None,
            stages: vec![
                stage("checkout", Some(StageOutcome::Succeeded), None),
                stage("test", None, None),
            ],
        }];
        assert_eq!(status_label(&running), "running stage `test` on runner-a");
    }
}

//! Showing a run as it happens: stage progress and log lines for people, or JSON lines.

use rivet_core::StageOutcome;
use rivet_sandbox::events::{Event, Level, Source};
use rivet_sandbox::WorkerReport;
use std::io::Write;
use std::path::Path;

pub struct Renderer {
    json: bool,
    file: String,
    out: std::io::Stdout,
    /// Input errors are held back until the summary: on a terminal, missing inputs are asked
    /// for and the run starts again, and the first attempt's errors would only confuse.
    held: Vec<Event>,
    /// Whether to skip the "pipeline NAME" line, already shown by an earlier attempt.
    quiet_definition: bool,
}

impl Renderer {
    pub fn new(json: bool, file: String, quiet_definition: bool) -> Self {
        Self {
            json,
            file,
            out: std::io::stdout(),
            held: Vec::new(),
            quiet_definition,
        }
    }

    pub fn event(&mut self, ev: &Event) {
        if !self.json && matches!(ev, Event::InputErrors { .. }) {
            self.held.push(ev.clone());
            return;
        }
        if !self.json && self.quiet_definition && matches!(ev, Event::Definition { .. }) {
            return;
        }
        self.show(ev);
    }

    fn show(&mut self, ev: &Event) {
        let mut out = self.out.lock();
        if self.json {
            if let Ok(line) = serde_json::to_string(ev) {
                let _ = writeln!(out, "{line}");
            }
            return;
        }
        let _ = match ev {
            Event::Log {
                stage,
                level,
                source,
                line,
                ..
            } => {
                let tag = match (source, level) {
                    (Source::System, _) => "rivet",
                    (Source::Stderr, _) => "stderr",
                    (_, Level::Error) => "error",
                    (_, Level::Warn) => "warn",
                    (_, Level::Debug) => "debug",
                    _ => "",
                };
                let stage = stage.as_deref().unwrap_or("-");
                if tag.is_empty() {
                    writeln!(out, "  [{stage}] {line}")
                } else {
                    writeln!(out, "  [{stage}] {tag}: {line}")
                }
            }
            Event::Definition { spec } => writeln!(
                out,
                "pipeline \"{}\" ({} stages)",
                spec.name,
                spec.stages.len()
            ),
            Event::StageStarted { name, .. } => writeln!(out, "▶ {name}"),
            Event::StageFinished {
                name,
                outcome,
                duration_ms,
                error,
                ..
            } => {
                let took =
                    rivet_sandbox::fmt_duration(std::time::Duration::from_millis(*duration_ms));
                match outcome {
                    StageOutcome::Succeeded => writeln!(out, "✓ {name} ({took})"),
                    StageOutcome::Skipped => {
                        writeln!(out, "- {name} skipped: {}", error.as_deref().unwrap_or(""))
                    }
                    StageOutcome::Failed => writeln!(
                        out,
                        "✗ {name} failed after {took}: {}",
                        error.as_deref().unwrap_or("")
                    ),
                    StageOutcome::TimedOut => writeln!(
                        out,
                        "✗ {name} timed out after {took}: {}",
                        error.as_deref().unwrap_or("")
                    ),
                }
            }
            Event::Problems { problems } => {
                for p in problems {
                    let _ = writeln!(out, "{}", p.render(&self.file));
                }
                Ok(())
            }
            Event::InputErrors { errors } => {
                for e in errors {
                    let _ = writeln!(out, "error: {e}");
                }
                Ok(())
            }
            Event::Finished { .. } | Event::Granted { .. } | Event::Call { .. } => Ok(()),
        };
    }

    pub fn summary(&mut self, report: &WorkerReport, workspace: &Path, kept: bool) {
        for ev in std::mem::take(&mut self.held) {
            self.show(&ev);
        }
        let mut out = self.out.lock();
        let took = rivet_sandbox::fmt_duration(report.duration);
        if self.json {
            let line = serde_json::json!({
                "event": "summary",
                "outcome": report.outcome,
                "duration_ms": report.duration.as_millis() as u64,
                "workspace": if kept { Some(workspace) } else { None },
            });
            let _ = writeln!(out, "{line}");
            return;
        }
        if report.outcome.is_success() {
            let _ = writeln!(out, "succeeded in {took}");
        } else {
            drop(out);
            eprintln!("{}: {} ({took})", self.file, report.outcome);
            out = self.out.lock();
        }
        if kept {
            let _ = writeln!(out, "workspace: {}", workspace.display());
        }
    }
}

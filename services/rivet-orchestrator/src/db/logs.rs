//! `log_lines`.

use rivet_protocol::messages::LogLine;
use sqlx::PgPool;
use uuid::Uuid;

/// A batch of lines as the columns `UNNEST` takes, NUL characters replaced (PostgreSQL refuses
/// them in text).
pub(crate) struct Columns {
    pub seq: Vec<i64>,
    pub at: Vec<i64>,
    pub stage: Vec<Option<String>>,
    pub level: Vec<String>,
    pub source: Vec<String>,
    pub text: Vec<String>,
}

impl Columns {
    pub(crate) fn of<'a>(lines: impl IntoIterator<Item = &'a LogLine>) -> Self {
        let mut c = Columns {
            seq: Vec::new(),
            at: Vec::new(),
            stage: Vec::new(),
            level: Vec::new(),
            source: Vec::new(),
            text: Vec::new(),
        };
        for l in lines {
            c.seq.push(l.seq as i64);
            c.at.push(l.at_ms as i64);
            c.stage.push(l.stage.clone());
            c.level.push(l.level.clone());
            c.source.push(l.source.clone());
            c.text.push(l.line.replace('\0', "\u{FFFD}"));
        }
        c
    }
}

/// Stores a batch; lines already stored (a redelivered batch) are skipped.
pub async fn insert(
    db: &mut sqlx::PgConnection,
    job_id: Uuid,
    attempt: u32,
    lines: &[LogLine],
) -> sqlx::Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let c = Columns::of(lines);
    sqlx::query(
        "INSERT INTO log_lines (job_id, attempt, seq, at_ms, stage, level, source, line) \
         SELECT $1, $2, * FROM UNNEST($3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind(job_id)
    .bind(attempt as i32)
    .bind(&c.seq)
    .bind(&c.at)
    .bind(&c.stage)
    .bind(&c.level)
    .bind(&c.source)
    .bind(&c.text)
    .execute(db)
    .await?;
    Ok(())
}

/// Lines of an attempt with `seq > after`, in order, at most `limit`.
pub async fn page(
    db: &PgPool,
    job_id: Uuid,
    attempt: u32,
    after: Option<u64>,
    limit: i64,
) -> sqlx::Result<Vec<LogLine>> {
    let rows: Vec<(i64, i64, Option<String>, String, String, String)> = sqlx::query_as(
        "SELECT seq, at_ms, stage, level, source, line FROM log_lines WHERE job_id = $1 AND attempt = $2 AND seq > $3 \
         ORDER BY seq LIMIT $4",
    )
    .bind(job_id)
    .bind(attempt as i32)
    .bind(after.map(|a| a as i64).unwrap_or(-1))
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(seq, at_ms, stage, level, source, line)| LogLine {
            seq: seq as u64,
            at_ms: at_ms as u64,
            stage,
            level,
            source,
            line,
        })
        .collect())
}

//! `pipelines` and `pipeline_versions`.

use rivet_core::PipelineSpec;
use rivet_protocol::http::{PipelineSummary, PipelineView};
use sqlx::PgPool;
use uuid::Uuid;

/// A stored version with what running it needs.
#[derive(Debug, Clone)]
pub struct Version {
    /// The pipeline's id.
    pub pipeline_id: Uuid,
    /// The public view.
    pub view: PipelineView,
    /// File name.
    pub file_name: String,
    /// Source.
    pub source: String,
}

#[derive(sqlx::FromRow)]
struct Row {
    pipeline_id: Uuid,
    project: String,
    name: String,
    version: i32,
    file_name: String,
    source: String,
    definition: sqlx::types::Json<PipelineSpec>,
    requires: Vec<String>,
    class_key: String,
    created_at_ms: i64,
}

impl From<Row> for Version {
    fn from(r: Row) -> Self {
        Self {
            pipeline_id: r.pipeline_id,
            file_name: r.file_name,
            source: r.source,
            view: PipelineView {
                project: r.project,
                name: r.name,
                version: r.version,
                definition: r.definition.0,
                class_key: r.class_key,
                requires: r.requires,
                created_at_ms: r.created_at_ms,
            },
        }
    }
}

const SELECT: &str = "SELECT p.id AS pipeline_id, pr.name AS project, p.name, v.version, v.file_name, v.source, v.definition, v.requires, \
     v.class_key, (extract(epoch FROM v.created_at) * 1000)::bigint AS created_at_ms \
     FROM pipelines p JOIN pipeline_versions v ON v.pipeline_id = p.id \
     JOIN projects pr ON pr.id = p.project_id";

/// Stores a new version of `name` in project `project_id` (creating the pipeline on first push)
/// and returns it.
pub async fn push(
    db: &PgPool,
    project_id: Uuid,
    name: &str,
    file_name: &str,
    source: &str,
    spec: &PipelineSpec,
) -> sqlx::Result<Version> {
    let mut tx = db.begin().await?;
    let (pipeline_id,): (Uuid,) = sqlx::query_as(
        "INSERT INTO pipelines (id, project_id, name) VALUES ($1, $2, $3) \
         ON CONFLICT (project_id, name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
    )
    .bind(Uuid::new_v4())
    .bind(project_id)
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    // Serialises concurrent pushes of one pipeline so versions stay dense.
    sqlx::query("SELECT id FROM pipelines WHERE id = $1 FOR UPDATE")
        .bind(pipeline_id)
        .execute(&mut *tx)
        .await?;
    let (next,): (i32,) = sqlx::query_as(
        "SELECT COALESCE(max(version), 0) + 1 FROM pipeline_versions WHERE pipeline_id = $1",
    )
    .bind(pipeline_id)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO pipeline_versions (pipeline_id, version, file_name, source, definition, requires, class_key) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(pipeline_id)
    .bind(next)
    .bind(file_name)
    .bind(source)
    .bind(sqlx::types::Json(spec))
    .bind(spec.requires.to_strings())
    .bind(spec.requires.class_key())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(get(db, project_id, name, Some(next))
        .await?
        .expect("the version was committed just above"))
}

/// A version of `name` in project `project_id` (the latest when `version` is `None`).
pub async fn get(
    db: &PgPool,
    project_id: Uuid,
    name: &str,
    version: Option<i32>,
) -> sqlx::Result<Option<Version>> {
    let row: Option<Row> = match version {
        Some(v) => {
            sqlx::query_as(&format!(
                "{SELECT} WHERE p.project_id = $1 AND p.name = $2 AND v.version = $3"
            ))
            .bind(project_id)
            .bind(name)
            .bind(v)
            .fetch_optional(db)
            .await?
        }
        None => {
            sqlx::query_as(&format!(
                "{SELECT} WHERE p.project_id = $1 AND p.name = $2 ORDER BY v.version DESC LIMIT 1"
            ))
            .bind(project_id)
            .bind(name)
            .fetch_optional(db)
            .await?
        }
    };
    Ok(row.map(Version::from))
}

/// The latest version number of a pipeline (a cheap lookup; versions never change once stored,
/// so their content can be cached by number).
pub async fn latest_version(
    db: &PgPool,
    project_id: Uuid,
    name: &str,
) -> sqlx::Result<Option<i32>> {
    sqlx::query_scalar(
        "SELECT v.version FROM pipelines p JOIN pipeline_versions v ON v.pipeline_id = p.id \
         WHERE p.project_id = $1 AND p.name = $2 ORDER BY v.version DESC LIMIT 1",
    )
    .bind(project_id)
    .bind(name)
    .fetch_optional(db)
    .await
}

/// Every pipeline of project `project_id` with its latest version.
pub async fn list(db: &PgPool, project_id: Uuid) -> sqlx::Result<Vec<PipelineSummary>> {
    let rows: Vec<(String, i32, sqlx::types::Json<PipelineSpec>, i64)> = sqlx::query_as(
        "SELECT DISTINCT ON (p.name) p.name, v.version, v.definition, (extract(epoch FROM v.created_at) * 1000)::bigint \
         FROM pipelines p JOIN pipeline_versions v ON v.pipeline_id = p.id WHERE p.project_id = $1 \
         ORDER BY p.name, v.version DESC",
    )
    .bind(project_id)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(name, latest_version, def, updated_at_ms)| PipelineSummary {
                name,
                latest_version,
                display_name: def.0.name,
                updated_at_ms,
            },
        )
        .collect())
}

//! `/api/v1/files`: upload, history, one file, its content, retries.

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Multipart, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::{ApiError, Problem};
use super::AppState;
use crate::files::{repo, Cursor, FileStatus, FileView};
use crate::notify;
use crate::upload::{self, ReadOptions};

/// Query extraction whose rejections are problem+json.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// Path extraction whose rejections are problem+json.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadParams {
    /// Name to record for a raw-body upload (multipart uploads carry their own).
    /// Display text only: no control characters, at most 255 characters.
    #[param(
        example = "invoices-2026-11.csv",
        max_length = 255,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub filename: Option<String>,
    /// Field delimiter: `,` `;` `tab` or `|`. Detected from the header when omitted.
    #[param(example = ";", value_type = Option<String>, pattern = r"^(,|;|\||tab|TAB|\t|\\t)$")]
    pub delimiter: Option<String>,
    /// Decimal separator of the amounts: `.` (default) or `,` (then `.` and spaces group thousands).
    #[param(example = ",", value_type = Option<String>, pattern = r"^[.,]$")]
    pub decimal_separator: Option<String>,
}

/// A multipart upload: one part named `file`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The CSV file.
    #[schema(value_type = String, format = Binary, content_media_type = "text/csv", min_length = 1)]
    file: Vec<u8>,
}

/// A raw-body upload: the CSV bytes themselves, not empty.
pub struct CsvBody;

impl utoipa::PartialSchema for CsvBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .min_length(Some(1))
            .description(Some("The CSV file's bytes."))
            .into()
    }
}

impl ToSchema for CsvBody {}

/// Upload a CSV file.
///
/// Streams the body to storage and answers at once; processing happens in the
/// background. Send it as `multipart/form-data` with one part named `file`, or as
/// the raw body with `Content-Type: text/csv` (or `application/octet-stream`).
/// A request with two `file` parts is rejected.
#[utoipa::path(
    post,
    path = "/api/v1/files",
    tag = "files",
    security(("api_key" = [])),
    params(UploadParams),
    request_body(content(
        (inline(UploadForm) = "multipart/form-data"),
        (inline(CsvBody) = "text/csv"),
        (inline(CsvBody) = "application/octet-stream"),
    )),
    responses(
        (status = 202, description = "Stored; processing is queued", body = FileView,
         headers(("Location" = String, description = "The file's URL"))),
        (status = 400, description = "No file, an empty file, a bad parameter or content type", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body stalled for UPLOAD_IDLE_TIMEOUT_SECONDS", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than MAX_UPLOAD_BYTES", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Storage or database unavailable; nothing was kept", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn upload_file(
    State(state): State<AppState>,
    Query(params): Query<UploadParams>,
    request: Request,
) -> Result<Response, ApiError> {
    let options = ReadOptions::parse(
        params.delimiter.as_deref(),
        params.decimal_separator.as_deref(),
    )
    .map_err(ApiError::BadRequest)?;
    check_length(request.headers(), state.max_upload_bytes)?;
    if let Some(name) = &params.filename {
        upload::check_filename(name)?;
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();

    let file = match mime.as_str() {
        "multipart/form-data" => {
            let multipart = Multipart::from_request(request, &state)
                .await
                .map_err(|e| ApiError::BadRequest(e.body_text()))?;
            upload_multipart(&state, multipart, params.filename, &options).await?
        }
        "text/csv" | "application/csv" | "text/plain" | "application/octet-stream" => {
            let filename = upload::check_filename(params.filename.as_deref().unwrap_or(""))?;
            let body = request.into_body().into_data_stream();
            let staged = upload::stage(&state.storage, state.limits(), body).await?;
            upload::commit(&state.db, staged, filename, &options).await?
        }
        "" => {
            return Err(ApiError::BadRequest(
                "no Content-Type; send multipart/form-data (curl -F file=@x.csv) or text/csv".into(),
            ))
        }
        other => {
            return Err(ApiError::BadRequest(format!(
                "Content-Type {other} is not accepted; send multipart/form-data (curl -F file=@x.csv) or text/csv"
            )))
        }
    };
    tracing::info!(file_id = %file.id, size_bytes = file.size_bytes, "file accepted");
    let location = format!("/api/v1/files/{}", file.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(FileView::from(file)),
    )
        .into_response())
}

fn check_length(headers: &HeaderMap, limit: u64) -> Result<(), ApiError> {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        Some(n) if n > limit => Err(upload::UploadError::TooLarge { limit }.into()),
        _ => Ok(()),
    }
}

async fn upload_multipart(
    state: &AppState,
    mut multipart: Multipart,
    filename: Option<String>,
    options: &ReadOptions,
) -> Result<crate::files::FileRow, ApiError> {
    let mut staged: Option<(upload::Staged, String)> = None;
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::from(upload::UploadError::Interrupted(e.body_text()))
    };
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        if field.name() != Some("file") {
            // Other fields are not used; read past them.
            continue;
        }
        if let Some((first, _)) = staged.take() {
            first.discard().await;
            return Err(ApiError::BadRequest(
                "the request has more than one `file` part; upload one file per request".into(),
            ));
        }
        let name = upload::check_filename(
            field
                .file_name()
                .map(str::to_string)
                .or_else(|| filename.clone())
                .as_deref()
                .unwrap_or(""),
        )?;
        let stored = upload::stage(&state.storage, state.limits(), field).await?;
        staged = Some((stored, name));
    }
    let Some((staged, name)) = staged else {
        return Err(ApiError::BadRequest(
            "the request has no `file` part; send the file as -F file=@x.csv".into(),
        ));
    };
    Ok(upload::commit(&state.db, staged, name, options).await?)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9]{1,16}_[0-9a-f]{32}$")]
    pub cursor: Option<String>,
    /// Only files in this status.
    pub status: Option<FileStatus>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FilePage {
    pub items: Vec<FileView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// List uploaded files, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/files",
    tag = "files",
    security(("api_key" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "A page of files", body = FilePage),
        (status = 400, description = "Bad limit, cursor or status", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_files(
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Json<FilePage>, ApiError> {
    let limit = params.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit {limit} is out of range; use 1 to 100"
        )));
    }
    let after = match params.cursor.as_deref() {
        None => None,
        Some(raw) => Some(Cursor::decode(raw).ok_or_else(|| {
            ApiError::BadRequest(
                "cursor is not one this API gave out; start again without it".into(),
            )
        })?),
    };
    let rows = repo::list(&state.db, params.status, after, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    let items: Vec<FileView> = rows
        .into_iter()
        .take(limit as usize)
        .map(FileView::from)
        .collect();
    let next_cursor = more.then(|| items.last()).flatten().map(|f| {
        Cursor {
            created_at: f.created_at,
            id: f.id,
        }
        .encode()
    });
    Ok(Json(FilePage { items, next_cursor }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NotificationView {
    #[schema(example = "email")]
    pub channel: String,
    /// `succeeded` or `failed`: which outcome it announces.
    pub kind: String,
    /// `pending`, `sending`, `sent` or `failed`.
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<notify::repo::NotificationRow> for NotificationView {
    fn from(n: notify::repo::NotificationRow) -> Self {
        Self {
            channel: n.channel,
            kind: n.kind,
            status: n.status,
            attempts: n.attempts,
            last_error: n.last_error,
            created_at: n.created_at,
            sent_at: n.sent_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FileDetail {
    #[serde(flatten)]
    pub file: FileView,
    pub notifications: Vec<NotificationView>,
}

/// Everything about one file, with its notifications.
#[utoipa::path(
    get,
    path = "/api/v1/files/{id}",
    tag = "files",
    security(("api_key" = [])),
    params(("id" = Uuid, Path, description = "File id")),
    responses(
        (status = 200, description = "The file", body = FileDetail),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such file", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_file(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<FileDetail>, ApiError> {
    let file = repo::get(&state.db, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let notifications = notify::repo::for_file(&state.db, id)
        .await?
        .into_iter()
        .map(NotificationView::from)
        .collect();
    Ok(Json(FileDetail {
        file: file.into(),
        notifications,
    }))
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no file with id {id}"))
}

/// The original bytes of a file, as uploaded.
#[utoipa::path(
    get,
    path = "/api/v1/files/{id}/content",
    tag = "files",
    security(("api_key" = [])),
    params(("id" = Uuid, Path, description = "File id")),
    responses(
        (status = 200, description = "The uploaded bytes", content_type = "text/csv", body = String),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such file", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Storage or database unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_content(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let file = repo::get(&state.db, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let stream = state.storage.stream(&file.object_key).await?;
    // The stored name is display text: keep it to safe characters in the header.
    let safe: String = file
        .filename
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv".to_string()),
            (header::CONTENT_LENGTH, file.size_bytes.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{safe}\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Re-queue a failed file for processing.
#[utoipa::path(
    post,
    path = "/api/v1/files/{id}/retry",
    tag = "files",
    security(("api_key" = [])),
    params(("id" = Uuid, Path, description = "File id")),
    responses(
        (status = 202, description = "Queued again", body = FileView),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such file", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The file is not failed", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn retry_file(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<(StatusCode, Json<FileView>), ApiError> {
    match repo::requeue_failed(&state.db, id).await? {
        None => Err(not_found(id)),
        Some(false) => Err(ApiError::Conflict(
            "only a failed file can be retried".into(),
        )),
        Some(true) => {
            let file = repo::get(&state.db, id)
                .await?
                .ok_or_else(|| not_found(id))?;
            Ok((StatusCode::ACCEPTED, Json(file.into())))
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RetriedNotifications {
    /// How many failed notifications were queued again.
    pub requeued: u64,
}

/// Re-queue a file's failed notifications.
#[utoipa::path(
    post,
    path = "/api/v1/files/{id}/notifications/retry",
    tag = "files",
    security(("api_key" = [])),
    params(("id" = Uuid, Path, description = "File id")),
    responses(
        (status = 202, description = "Failed notifications queued again", body = RetriedNotifications),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such file", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn retry_notifications(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<(StatusCode, Json<RetriedNotifications>), ApiError> {
    repo::get(&state.db, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let requeued = notify::repo::retry_failed(&state.db, id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(RetriedNotifications { requeued }),
    ))
}

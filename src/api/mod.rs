//! The HTTP surface: routes, OpenAPI document and Swagger UI. Handlers parse,
//! call one domain function and map its result; they hold no business rules.

pub mod error;
pub mod files;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::storage::Storage;
use error::{problem, Problem};

#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub storage: Storage,
    pub max_upload_bytes: u64,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tally",
        description = "Upload CSV files of transactions; Tally counts their entries and sums their `amount EUR` column exactly, keeps every upload and result as history, and notifies you when a file is done.",
        license(name = "MIT")
    ),
    tags((name = "files", description = "Uploads, results and history"), (name = "health", description = "Liveness and readiness"))
)]
struct ApiDoc;

fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(files::upload_file, files::list_files))
        .routes(routes!(files::get_file))
        .routes(routes!(files::get_content))
        .routes(routes!(files::retry_file))
        .routes(routes!(files::retry_notifications))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// The OpenAPI document, as served at `/openapi.json`.
pub fn openapi() -> OpenApiDoc {
    routes().split_for_parts().1
}

pub fn router(state: AppState) -> Router {
    let (api, doc) = routes().split_for_parts();
    api.merge(SwaggerUi::new("/docs").url("/openapi.json", doc))
        .fallback(not_found)
        // Uploads are streamed and capped by MAX_UPLOAD_BYTES, not buffered.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "no such route; the API is described at /openapi.json and /docs".into(),
    )
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Up", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// The database and the storage answer.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Database or storage unreachable", body = Problem, content_type = "application/problem+json"),
    ))]
async fn readyz(State(state): State<AppState>) -> Response {
    if let Err(e) = sqlx::query("SELECT 1").execute(&state.db).await {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the database is unreachable: {e}"),
        );
    }
    if let Err(e) = state.storage.check().await {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the storage is unreachable: {e}"),
        );
    }
    Json(Health {
        status: "ready".into(),
    })
    .into_response()
}

//! The HTTP surface: routes, OpenAPI document and Swagger UI. Handlers parse,
//! call one domain function and map its result; they hold no business rules.

pub mod error;
pub mod files;

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::ApiKeys;
use crate::storage::Storage;
use crate::upload::Limits;
use error::{problem, ApiError, Problem};

#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub storage: Storage,
    pub max_upload_bytes: u64,
    pub upload_idle_timeout: Duration,
    pub api_keys: ApiKeys,
}

impl AppState {
    pub fn limits(&self) -> Limits {
        Limits {
            max_bytes: self.max_upload_bytes,
            idle: self.upload_idle_timeout,
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tally",
        description = "Upload CSV files of transactions; Tally counts their entries and sums their `amount EUR` column exactly, keeps every upload and result as history, and notifies you when a file is done.",
        license(name = "MIT")
    ),
    tags((name = "files", description = "Uploads, results and history"), (name = "operations", description = "Health, readiness and metrics")),
    modifiers(&BearerKey)
)]
struct ApiDoc;

/// Declares the `api_key` scheme that `/api/v1` operations require.
struct BearerKey;

impl utoipa::Modify for BearerKey {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key from `tally key new`, sent as `Authorization: Bearer <key>`. \
                         Not required when the server runs without keys on loopback.",
                    ))
                    .build(),
            ),
        );
    }
}

fn routes(keys: Option<ApiKeys>) -> OpenApiRouter<AppState> {
    let mut v1 = OpenApiRouter::new()
        .routes(routes!(files::upload_file, files::list_files))
        .routes(routes!(files::get_file))
        .routes(routes!(files::get_content))
        .routes(routes!(files::retry_file))
        .routes(routes!(files::retry_notifications));
    if let Some(keys) = keys {
        v1 = v1.route_layer(middleware::from_fn_with_state(keys, require_key));
    }
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(v1)
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// Lets a request through only with a configured key.
async fn require_key(
    State(keys): State<ApiKeys>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(key) if keys.verify(key) => Ok(next.run(request).await),
        Some(_) => Err(ApiError::Unauthorized("the API key is not valid".into())),
        None => Err(ApiError::Unauthorized(
            "an API key is required: send Authorization: Bearer <key>".into(),
        )),
    }
}

/// The OpenAPI document, as served at `/openapi.json`.
pub fn openapi() -> OpenApiDoc {
    routes(None).split_for_parts().1
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: AppState) -> Router {
    let keys = (!state.api_keys.is_empty()).then(|| state.api_keys.clone());
    let (api, doc) = routes(keys).split_for_parts();
    let header = |name: &'static str, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        )
    };
    api.merge(SwaggerUi::new("/docs").url("/openapi.json", doc))
        .fallback(not_found)
        // Uploads are streamed and capped by MAX_UPLOAD_BYTES, not buffered.
        .layer(DefaultBodyLimit::disable())
        .layer(header("x-content-type-options", "nosniff"))
        .layer(header("x-frame-options", "DENY"))
        .layer(header("referrer-policy", "no-referrer"))
        .layer(header(
            "content-security-policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
             script-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        ))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let id = request
                .headers()
                .get(&REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path())
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
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
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Up", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// The database and the storage answer.
#[utoipa::path(get, path = "/readyz", tag = "operations",
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

/// Prometheus metrics: this process's counters and the deployment's queue gauges.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4", body = String),
        (status = 503, description = "Database unreachable", body = Problem, content_type = "application/problem+json"),
    ))]
async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = crate::metrics::METRICS.render(&state.db).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

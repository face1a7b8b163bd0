//! The HTTP surface: the read-only registry API (at the root for the
//! default registry and under `/registry/{registry}` for every registry,
//! each under `/v0.1` and `/v0`), the SSE feed, the registry page, the
//! OpenAPI document, and the probes (`/healthz`, `/readyz`) with `/metrics`
//! unless the health listener (`--health-listen`) serves it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use herald_runtime::health::{self, Readiness};
use prometheus_client::registry::Registry;

use crate::access::Viewer;
use crate::app::AppState;
use crate::auth::{self, Authenticator};
use crate::problem::Problem;
use crate::query::{ListParams, include_deleted, list, server_list_json};
use crate::view::{Entry, retained};
use crate::{etag, metrics, page, sse};

/// The OpenAPI document of what this binary serves.
pub const OPENAPI: &str = include_str!("assets/openapi.json");

/// The registry API's path prefixes.
const VERSIONS: [&str; 2] = ["/v0.1", "/v0"];
/// The SSE feed, below a version prefix (the official extension convention).
pub const EVENTS_PATH: &str = "/x/dev.herald/events";

type Params = Path<HashMap<String, String>>;
type QueryList = Query<Vec<(String, String)>>;

/// `metrics`: the registry to serve at `/metrics` on this router (`None`
/// when a listener of its own serves it).
pub fn router(state: AppState, readiness: Readiness, metrics: Option<Arc<Registry>>) -> Router {
    // The data routes, behind the caller check (`auth`).
    let mut data = Router::new();
    for base in ["", "/registry/{registry}"] {
        for v in VERSIONS {
            data = data
                .route(&format!("{base}{v}/servers"), get(list_servers))
                .route(&format!("{base}{v}/servers/{{*rest}}"), get(server_path))
                .route(&format!("{base}{v}{EVENTS_PATH}"), get(sse::events));
        }
    }
    let data = data.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::require,
    ));
    let mut api = Router::new().merge(data);
    if let Authenticator::OAuth(oauth) = &*state.auth {
        api = api.route(&oauth.metadata_path(), get(auth::metadata));
    }
    api = api
        .route("/", get(page::page))
        .route("/registry/{registry}/", get(page::page))
        .route("/registry/{registry}", get(page::page))
        .route("/openapi.json", get(openapi))
        .fallback(|| async { Problem::no_route() });
    let tracked = state.metrics.clone();
    api.with_state(state)
        .merge(match metrics {
            Some(registry) => health::router(readiness, registry),
            None => health::probes(readiness),
        })
        .layer(axum::middleware::from_fn_with_state(
            tracked,
            metrics::track,
        ))
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

async fn list_servers(
    State(app): State<AppState>,
    Path(params): Params,
    Query(query): QueryList,
    Extension(viewer): Extension<Viewer>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    list_response(&app, &params, &query, &headers, &viewer, false)
}

fn list_response(
    app: &AppState,
    params: &HashMap<String, String>,
    query: &[(String, String)],
    headers: &HeaderMap,
    viewer: &Viewer,
    deployed_only: bool,
) -> Result<Response, Problem> {
    let view = app.view(params.get("registry").map(String::as_str))?;
    let list_params = ListParams::parse(query)?;
    // The page holds its entries: the body is built after the lock is let go.
    let page = list(&view.read(), &list_params, deployed_only, viewer);
    let body = server_list_json(&page.entries, page.next_cursor.as_deref());
    Ok(etag::json_response(headers, body, viewer.is_personal()))
}

/// `servers/deployed`, `servers/{name}/versions` and
/// `servers/{name}/versions/{version}`; the name may arrive URL-encoded
/// (`com.example%2Fmy-server`) or with its slash as is.
async fn server_path(
    State(app): State<AppState>,
    Path(params): Params,
    Query(query): QueryList,
    Extension(viewer): Extension<Viewer>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let rest = params.get("rest").map(String::as_str).unwrap_or_default();
    if rest == "deployed" {
        return list_response(&app, &params, &query, &headers, &viewer, true);
    }
    let view = app.view(params.get("registry").map(String::as_str))?;
    let (name, version) = if let Some(name) = rest.strip_suffix("/versions") {
        (name, None)
    } else if let Some((name, version)) = rest.rsplit_once("/versions/") {
        (name, Some(version))
    } else {
        return Err(Problem::no_route());
    };
    let with_deleted = include_deleted(&query)?;
    let (parts, retention) = {
        let view = view.read();
        (view.name(name), view.retention())
    };
    // What the caller may not see does not exist for it: the same 404.
    let seen = parts.and_then(|p| p.seen_by(&viewer));
    let now = chrono::Utc::now();
    let (mut versions, deleted): (Vec<Arc<Entry>>, Vec<Arc<Entry>>) = match &seen {
        Some(seen) => (
            seen.live.values().cloned().collect(),
            seen.deleted
                .values()
                .filter(|e| with_deleted && retained(e, now, retention))
                .cloned()
                .collect(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    if versions.is_empty() && deleted.is_empty() {
        return Err(Problem::not_found(
            "serverName",
            format!("no server {:?} in this registry", excerpt(name)),
        ));
    }
    let body = match version {
        None => {
            versions.extend(deleted.iter().cloned());
            // Newest publication first, as the official API orders them.
            versions.sort_by(|a, b| {
                let (a, b) = (&a.response, &b.response);
                b.meta
                    .official
                    .published_at
                    .cmp(&a.meta.official.published_at)
                    .then_with(|| {
                        herald_core::version::compare(&b.server.version, &a.server.version)
                    })
            });
            server_list_json(&versions, None)
        }
        Some(wanted) => {
            // `latest` is a live version; a deleted one only by its own name.
            let found = versions
                .iter()
                .find(|e| {
                    if wanted == "latest" {
                        e.response.meta.official.is_latest
                    } else {
                        e.response.server.version == wanted
                    }
                })
                .or_else(|| deleted.iter().find(|e| e.response.server.version == wanted));
            match found {
                Some(e) => e.json.clone(),
                None => {
                    return Err(Problem::not_found(
                        "version",
                        format!(
                            "server {:?} has no version {:?}",
                            excerpt(name),
                            excerpt(wanted)
                        ),
                    ));
                }
            }
        }
    };
    Ok(etag::json_response(&headers, body, viewer.is_personal()))
}

fn excerpt(s: &str) -> String {
    s.chars().take(200).collect()
}

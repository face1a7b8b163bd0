//! Errors as RFC 9457 problem documents (`application/problem+json`),
//! naming the offending parameter when there is one.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, thiserror::Error)]
#[error("{title}: {detail}")]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<&'static str>,
    /// Seconds after which trying again may succeed (`Retry-After`).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn bad_parameter(parameter: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind: "urn:herald:problem:bad-parameter",
            title: "Bad Request",
            status: 400,
            detail: detail.into(),
            parameter: Some(parameter),
            retry_after: None,
        }
    }

    pub fn not_found(parameter: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind: "urn:herald:problem:not-found",
            title: "Not Found",
            status: 404,
            detail: detail.into(),
            parameter: Some(parameter),
            retry_after: None,
        }
    }

    /// No usable credentials; `detail` says what was wrong (never echoing
    /// the token).
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self {
            kind: "urn:herald:problem:unauthorized",
            title: "Unauthorized",
            status: 401,
            detail: detail.into(),
            parameter: None,
            retry_after: None,
        }
    }

    pub fn no_route() -> Self {
        Self {
            kind: "urn:herald:problem:not-found",
            title: "Not Found",
            status: 404,
            detail: "no such resource (this API is read-only: publish, status and auth endpoints are not served)".into(),
            parameter: None,
            retry_after: None,
        }
    }

    pub fn too_many_subscribers(max: usize, retry_after: u64) -> Self {
        Self {
            kind: "urn:herald:problem:too-many-subscribers",
            title: "Service Unavailable",
            status: 503,
            detail: format!("the server already has its maximum of {max} event subscribers"),
            parameter: None,
            retry_after: Some(retry_after),
        }
    }

    pub fn too_many_client_subscribers(max: usize, retry_after: u64) -> Self {
        Self {
            kind: "urn:herald:problem:too-many-client-subscribers",
            title: "Too Many Requests",
            status: 429,
            detail: format!(
                "this client already holds its share of {max} event subscriptions; close one first"
            ),
            parameter: None,
            retry_after: Some(retry_after),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_string(&self).unwrap_or_default();
        // A 404 may be personal (a name hidden from this caller): no cache
        // may keep it or hand it to another caller.
        let mut response = (
            status,
            [
                (header::CONTENT_TYPE, "application/problem+json"),
                (header::CACHE_CONTROL, "no-store"),
                (header::VARY, "Authorization"),
            ],
            body,
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

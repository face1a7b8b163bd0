//! Errors as RFC 9457 problem documents (`application/problem+json`),
//! naming the offending parameter when there is one.

use axum::http::{StatusCode, header};
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
}

impl Problem {
    pub fn bad_parameter(parameter: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind: "urn:herald:problem:bad-parameter",
            title: "Bad Request",
            status: 400,
            detail: detail.into(),
            parameter: Some(parameter),
        }
    }

    pub fn not_found(parameter: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind: "urn:herald:problem:not-found",
            title: "Not Found",
            status: 404,
            detail: detail.into(),
            parameter: Some(parameter),
        }
    }

    pub fn no_route() -> Self {
        Self {
            kind: "urn:herald:problem:not-found",
            title: "Not Found",
            status: 404,
            detail: "no such resource (this API is read-only: publish, status and auth endpoints are not served)".into(),
            parameter: None,
        }
    }

    pub fn too_many_subscribers(max: usize) -> Self {
        Self {
            kind: "urn:herald:problem:too-many-subscribers",
            title: "Service Unavailable",
            status: 503,
            detail: format!("the server already has its maximum of {max} event subscribers"),
            parameter: None,
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_string(&self).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}

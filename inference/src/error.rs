//! The service's HTTP errors: each maps to a status code and the `{"error": {message, type}}` body.
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use polyllm_common::wire::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON or a request the service cannot take (400).
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed JSON with missing fields or wrong types (422).
    #[error("{0}")]
    Unprocessable(String),
    /// The model is still loading or warming up (503).
    #[error("the model is loading; retry shortly")]
    Loading,
    /// Every slot is busy and the wait queue is full (503 with Retry-After).
    #[error("server busy: {in_flight} requests running and {queued} queued; retry later")]
    Overloaded { in_flight: usize, queued: usize },
    /// Generation failed inside the engine (500).
    #[error("generation failed: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Loading | ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) | ApiError::Unprocessable(_) => "invalid_request_error",
            ApiError::Loading => "model_loading",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::Internal(_) => "server_error",
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.kind(), self.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), Json(self.body())).into_response();
        if matches!(self, ApiError::Loading | ApiError::Overloaded { .. }) {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

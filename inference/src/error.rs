//! The service's HTTP errors: each maps to a status code and the `{"error": {message, type}}` body.
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use polyllm_common::validation::ValidationError;
use polyllm_common::wire::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request breaks one of the contract's rules (400, or 422 for a body of the wrong shape).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
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
            ApiError::Invalid(e) => StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
            ApiError::Loading | ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Invalid(e) => e.kind(),
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

//! The errors a client can get back from the router, and how each becomes an HTTP response with an
//! `ErrorBody` (`{"error": {"message", "type"}}`), the same shape the model services use.
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use polyllm_common::validation::ValidationError;
use polyllm_common::wire::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request breaks one of the contract's rules (400, or 422 for a body of the wrong shape).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// The client did not send its request body in time.
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    ModelNotFound(String),
    #[error("rate limit exceeded")]
    RateLimited { retry_after_secs: u64 },
    #[error("{0}")]
    NoBackend(String),
    /// An error the backend answered with (4xx), relayed as is.
    #[error("{}", .body.error.message)]
    Backend { status: StatusCode, body: ErrorBody },
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(e) => StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NoBackend(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Backend { status, .. } => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Invalid(e) => e.kind(),
            ApiError::TooLarge(_) => "request_too_large",
            ApiError::Timeout(_) => "request_timeout",
            ApiError::ModelNotFound(_) => "model_not_found",
            ApiError::RateLimited { .. } => "rate_limit_exceeded",
            ApiError::NoBackend(_) => "backend_unavailable",
            ApiError::Backend { .. } => "backend_error",
            ApiError::Internal(_) => "internal_error",
        }
    }

    pub fn body(&self) -> ErrorBody {
        match self {
            ApiError::Backend { body, .. } => body.clone(),
            other => ErrorBody::new(other.kind(), other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (status, axum::Json(self.body())).into_response();
        match &self {
            ApiError::RateLimited { retry_after_secs } => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::Backend { status, .. } if *status == StatusCode::SERVICE_UNAVAILABLE => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::NoBackend(_) => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

//! HTTP plumbing shared by the index client and the downloader: the client, error texts, retries.

use std::future::Future;
use std::time::Duration;

use reqwest::StatusCode;

use super::progress::Reporter;
use super::{FetchError, FetchOptions};

/// The outcome of one failed try: worth another go, or not.
#[derive(Debug)]
pub(crate) enum Attempt {
    Retry(FetchError),
    Fatal(FetchError),
}

impl Attempt {
    pub fn into_inner(self) -> FetchError {
        match self {
            Self::Retry(e) | Self::Fatal(e) => e,
        }
    }
}

pub(crate) fn client(opts: &FetchOptions) -> Result<reqwest::Client, FetchError> {
    reqwest::Client::builder()
        .connect_timeout(opts.connect_timeout)
        .read_timeout(opts.read_timeout)
        .user_agent(concat!("polyllm-fetch-models/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| FetchError::Client(error_chain(&e)))
}

/// The causes of an error, without the outer "error sending request for url (...)" that repeats
/// the URL we already print.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = e.source();
    while let Some(err) = cur {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

/// Statuses that can go away by themselves.
pub(crate) fn transient_status(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT
}

pub(crate) fn http_error(url: &str, status: StatusCode) -> Attempt {
    let err = FetchError::Http { url: url.to_owned(), status: status.as_u16() };
    if transient_status(status) {
        Attempt::Retry(err)
    } else {
        Attempt::Fatal(err)
    }
}

/// Runs `op` up to `1 + opts.retries` times, sleeping `retry_backoff`, then twice that, ...
/// between tries that failed with [`Attempt::Retry`].
pub(crate) async fn with_retries<T, F, Fut>(
    opts: &FetchOptions,
    reporter: &Reporter,
    what: &str,
    mut op: F,
) -> Result<T, FetchError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Attempt>>,
{
    let mut attempt = 0u32;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(Attempt::Retry(e)) if attempt < opts.retries => {
                let delay = opts.retry_backoff.saturating_mul(1 << attempt.min(16));
                attempt += 1;
                reporter.log(format!(
                    "{what}: {e}; retrying in {:.1}s (try {} of {})",
                    delay.as_secs_f64(),
                    attempt + 1,
                    opts.retries + 1
                ));
                tokio::time::sleep(delay.min(Duration::from_secs(60))).await;
            }
            Err(a) => return Err(a.into_inner()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn chains_skip_the_outer_message_and_repeats() {
        let e = E(
            "error sending request",
            Some(Box::new(E("tcp connect error: refused", Some(Box::new(E("refused", None)))))),
        );
        assert_eq!(error_chain(&e), "tcp connect error: refused");
        assert_eq!(error_chain(&E("alone", None)), "alone");
        assert!(transient_status(StatusCode::BAD_GATEWAY));
        assert!(!transient_status(StatusCode::NOT_FOUND));
    }
}

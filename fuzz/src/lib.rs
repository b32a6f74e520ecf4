//! Fuzz harnesses for the parts of the mesh that read bytes from strangers: the router's request
//! decoders and validators (native and OpenAI), the model service's, and the SSE parser that reads
//! what backends stream. Each harness takes arbitrary bytes and panics when an invariant breaks;
//! any other outcome (a clean 4xx error included) is a pass.
//!
//! `cargo +nightly fuzz run --features libfuzzer <target>` drives them under libFuzzer (the targets
//! in `fuzz_targets/` are one line each); `tests/corpus.rs` replays the saved corpus in
//! `fuzz/corpus/<target>/` on every test run.
use polyllm_common::sse::{SseEvent, SseParser};
use polyllm_common::validation::SamplingInput;
use polyllm_common::wire::GenerateRequest;

/// A target: its name and the function that runs one input.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by the name of its corpus directory and `cargo fuzz` binary.
pub const TARGETS: &[Target] = &[
    ("sse_parser", sse_parser),
    ("router_generate", router_generate),
    ("router_openai", router_openai),
    ("inference_request", inference_request),
];

/// The prompt limit the router harnesses run with (small, so the fuzzer reaches it).
const MAX_PROMPT_CHARS: usize = 64;
/// A context no `max_tokens` reaches, so the service's checks reduce to the request's own fields.
const HUGE_CONTEXT: usize = u32::MAX as usize + 1;

/// The SSE parser gives the same events however the bytes are split: the first byte picks the
/// split points of the rest. What it holds stays within a constant factor of what it was given
/// (an invalid UTF-8 byte becomes U+FFFD, three bytes).
pub fn sse_parser(data: &[u8]) {
    let Some((&seed, bytes)) = data.split_first() else { return };
    let mut whole = SseParser::new();
    let expected = whole.push(bytes);
    assert!(whole.pending_len() <= 3 * bytes.len());

    let mut split = SseParser::new();
    let mut got: Vec<SseEvent> = Vec::new();
    let step = usize::from(seed % 7) + 1;
    let mut rest = bytes;
    let mut i = 0usize;
    while !rest.is_empty() {
        // Chunk sizes cycle through 1..=step, so CR/LF pairs and UTF-8 sequences get cut.
        let n = (i % step + 1).min(rest.len());
        got.extend(split.push(&rest[..n]));
        rest = &rest[n..];
        i += 1;
    }
    assert_eq!(got, expected, "events depend on how the bytes were split");
    assert_eq!(split.pending_len(), whole.pending_len());
    for ev in &expected {
        assert!(!ev.event.contains(['\n', '\r']), "a field value holds a line break: {ev:?}");
        assert!(!ev.data.contains('\r'), "a CR survived in the data: {ev:?}");
    }
}

/// The router's `POST /generate` decoder: a 4xx error, or a request within the limits whose
/// upstream body the model service accepts too.
pub fn router_generate(data: &[u8]) {
    let limits = router::validation::Limits { max_prompt_chars: MAX_PROMPT_CHARS };
    match router::validation::generate(data, limits) {
        Ok(req) => check_routed(&req),
        Err(e) => assert!(e.status().is_client_error(), "{e:?} for a bad request"),
    }
}

/// The router's OpenAI decoders (chat and completions), on the same bytes.
pub fn router_openai(data: &[u8]) {
    let limits = router::validation::Limits { max_prompt_chars: MAX_PROMPT_CHARS };
    for decoded in [router::openai::chat_request(data, limits), router::openai::completion_request(data, limits)] {
        match decoded {
            Ok((req, _usage)) => check_routed(&req),
            Err(e) => assert!(e.status().is_client_error(), "{e:?} for a bad request"),
        }
    }
}

/// What holds for every request the router accepts.
fn check_routed(req: &router::validation::RouterRequest) {
    assert!(!req.prompt.is_empty(), "empty prompt accepted");
    assert_ne!(req.max_tokens, Some(0), "max_tokens 0 accepted");
    if let Some(t) = req.temp {
        assert!(t.is_finite() && (0.0..=100.0).contains(&t), "temperature {t} accepted");
    }
    if req.protocol == router::validation::Protocol::Generate {
        // The normalized prompt is what goes upstream, and it is within the limit.
        assert!(req.prompt.chars().count() <= MAX_PROMPT_CHARS, "prompt over the limit accepted");
        let up: GenerateRequest =
            serde_json::from_slice(&req.upstream_body).expect("the upstream body is a GenerateRequest");
        assert_eq!(up.prompt, req.prompt);
        assert_eq!(up.stream, Some(true), "the router always streams from the backend");
        // Router and service agree: what the router passes, the service's own checks pass.
        let input = SamplingInput::from(&up);
        if let Err(e) = inference::validation::sampling(&input, HUGE_CONTEXT) {
            panic!("the router accepted a request the model service refuses: {e:?}");
        }
    }
}

/// The model service's decoders: `/generate`, `/v1/chat/completions` and `/v1/completions` bodies
/// through the same JSON extraction and checks as the handlers (tokenization aside).
pub fn inference_request(data: &[u8]) {
    use inference::validation::sampling;
    use polyllm_common::openai::{chat_messages, completion_prompt, ChatCompletionRequest, CompletionRequest};
    let checked = |input: &SamplingInput| match sampling(input, 4096) {
        Ok((max_tokens, params, stop)) => {
            assert!((1..4096).contains(&max_tokens), "max_tokens {max_tokens} accepted");
            assert!(params.temperature.is_finite() && params.temperature >= 0.0);
            assert!(stop.iter().all(|s| !s.is_empty()));
        }
        Err(e) => assert!(e.status().is_client_error(), "{e:?}"),
    };
    if let Ok(axum::Json(req)) = axum::Json::<GenerateRequest>::from_bytes(data) {
        checked(&SamplingInput::from(&req));
    }
    if let Ok(axum::Json(req)) = axum::Json::<ChatCompletionRequest>::from_bytes(data) {
        match req.common.sampling() {
            Ok(input) => checked(&input),
            Err(e) => assert!((400..500).contains(&e.status()), "{e:?}"),
        }
        let n = req.messages.len();
        match chat_messages(req.messages) {
            Ok(m) => assert_eq!(m.len(), n),
            Err(e) => assert!((400..500).contains(&e.status()), "{e:?}"),
        }
    }
    if let Ok(axum::Json(req)) = axum::Json::<CompletionRequest>::from_bytes(data) {
        if let Err(e) = completion_prompt(req.prompt) {
            assert!((400..500).contains(&e.status()), "{e:?}");
        }
    }
}

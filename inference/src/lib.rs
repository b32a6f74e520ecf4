//! The polyllm model service: one GGUF model behind an HTTP API.
//!
//! Modules, each owning one thing:
//! - [`config`]: command-line flags and their environment fallbacks.
//! - [`tokenizer`]: a `tokenizers::Tokenizer` built from GGUF metadata, and streaming decode.
//! - [`chat`]: the chat template from the GGUF metadata, rendered with minijinja.
//! - [`kernels`]: weight matrices and our Q8_0 CPU matmul kernels.
//! - [`model`]: loading GGUF weights for each supported architecture; per-request KV caches.
//! - [`sampling`]: greedy, temperature, top-k and top-p sampling.
//! - [`engine`]: what every request shares (weights, tokenizer) and what one request is.
//! - [`batch`]: continuous batching: one thread steps every running request together.
//! - [`scheduler`]: admission: concurrency slots and the bounded wait queue.
//! - [`validation`]: request checks, turning bad input into 4xx errors.
//! - [`metrics`]: Prometheus metrics.
//! - [`state`]: the shared state and how a checked job takes a slot and starts.
//! - [`server`]: HTTP routes (`/generate`, `/health`, `/metrics`) and [`openai`]: the OpenAI API.
pub mod batch;
pub mod chat;
pub mod config;
pub mod engine;
pub mod error;
pub mod kernels;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod openai;
pub mod sampling;
pub mod scheduler;
pub mod server;
pub mod state;
pub mod tokenizer;
pub mod validation;

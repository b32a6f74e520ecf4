//! The contract between the polyllm services, and the helpers they share. Each of these exists
//! once, here:
//! - the JSON shapes on the wire: a model service's `/generate` ([`wire`]), the OpenAI request
//!   bodies and their conversion to messages or a prompt ([`openai`]), the router's request as the
//!   service's plus routing fields, with a typed preference, and its events ([`route`]);
//! - the request rules: sampling limits and defaults, prompt checks, and the typed
//!   [`validation::ValidationError`] every service renders ([`validation`]);
//! - the routing rule, next to the router model's metadata ([`router_model`], with the
//!   featurizer);
//! - the server-sent-events framing ([`sse`]) and the backend catalog ([`catalog`]).
pub mod catalog;
#[cfg(feature = "featurizer")]
pub mod features;
#[cfg(feature = "plot")]
pub mod font;
pub mod gbdt;
#[cfg(feature = "server")]
pub mod listener;
pub mod openai;
pub mod route;
#[cfg(feature = "featurizer")]
pub mod router_model;
pub mod sse;
pub mod validation;
pub mod wire;

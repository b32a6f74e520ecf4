//! Types and helpers that every polyllm service must agree on byte for byte:
//! the JSON shapes on the wire ([`wire`]), the server-sent-events framing ([`sse`]) and the
//! backend catalog ([`catalog`]).
pub mod catalog;
#[cfg(feature = "featurizer")]
pub mod features;
pub mod gbdt;
#[cfg(feature = "server")]
pub mod listener;
pub mod route;
#[cfg(feature = "featurizer")]
pub mod router_model;
pub mod sse;
pub mod wire;

//! The polyllm load test as a library: the prompt set, the streaming client, the per-request
//! records, the summary statistics, the CSV/table output, the plots and the Prometheus read-out.
//! The `load_test` binary wires them to a command line.
pub mod client;
pub mod dataset;
pub mod plots;
pub mod prom;
pub mod record;
pub mod stats;

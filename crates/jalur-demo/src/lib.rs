//! Runtime pieces of `jalur demo`, shared with the tests that drive the same scenarios:
//!
//! - [`consul`]: a Consul protocol double (an in-process server for the parts of Consul's
//!   documented HTTP API that jalur uses), which the demo runs as the simulated legacy
//!   registry and the tests use in place of a Consul agent;
//! - [`app`]: [`SampleApp`], a sample service instance (HTTP/1.1 and h2c gRPC on one port, with
//!   deterministic fault injection) that plays the legacy and meshed services;
//! - [`load`]: [`LoadGen`], an open-loop fixed-rate load generator that records every response,
//!   the demo's built-in load and the migration drills' load;
//! - [`grpc`]: the gRPC length-prefixed message framing both of them speak, written by hand;
//! - [`envoy`]: a stock Envoy fed over ADS (the demo puts one meshed instance behind it when
//!   Envoy is installed; the tests drive it as a peer), with [`process`], [`client`] and
//!   [`eventually`] beneath it.
//!
//! Unlike `jalur-testkit`, this crate is a runtime dependency of the `jalur` binary, so it holds
//! no test-only helpers and never depends on the testkit.

pub mod app;
pub mod client;
pub mod consul;
pub mod envoy;
pub mod eventually;
pub mod grpc;
pub mod load;
pub mod process;

pub use app::SampleApp;
pub use consul::{ConsulDouble, ConsulOpts};
pub use load::{share, LoadGen, LoadProtocol, LoadSpec, LoadSummary, LoadTarget, Sample};

//! Arbitrary bytes decoded as every xDS resource type `jalur proxy` converts, then converted
//! into its routing tables: decoding may fail and conversion may refuse, but nothing may panic
//! (a panic here would be a crash on a control plane's push).
//! Run with `cargo fuzz run xds_convert` (nightly). Seed it with valid encoded resources first:
//! `JALUR_XDS_CORPUS=$PWD/fuzz/corpus/xds_convert cargo test -p jalur-proxy --lib seeds_are_valid`.
//! The stable stand-in, which mutates those resources, is `config::convert::tests::mutate` in
//! crates/jalur-proxy.
#![no_main]

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use jalur_proxy::config::convert;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(l) = Listener::decode(data) {
        let _ = convert::listener(&l);
    }
    if let Ok(rc) = RouteConfiguration::decode(data) {
        let _ = convert::route_table(&rc);
    }
    if let Ok(c) = Cluster::decode(data) {
        let _ = convert::cluster(&c);
    }
    if let Ok(cla) = ClusterLoadAssignment::decode(data) {
        let _ = convert::endpoints(&cla);
    }
});

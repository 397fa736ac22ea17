//! Fault injection from `typed_per_filter_config`: HTTPFault (or a FilterConfig wrapping one)
//! at route, virtual host or route configuration level.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::FilterConfig;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    fault_abort::ErrorType, HttpFault,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::RbacPerRoute;
use envoy_types::pb::google::protobuf::Any;
use prost::Name;

use super::{decode, positive, ppm, reject_if, type_name, At, Invalid, Res};
use crate::config::Fault;

/// The fault configuration in a `typed_per_filter_config` map: `None` when the map has none,
/// `Some(None)` when it disables the fault filter. Other filters' entries are not jalur's
/// business: their filters were accepted as optional or rejected on the listener.
pub(super) fn per_filter_fault(configs: &HashMap<String, Any>) -> Res<Option<Option<Fault>>> {
    let mut keys: Vec<&String> = configs.keys().collect();
    keys.sort();
    for key in keys {
        let any = &configs[key];
        let found = per_filter_entry(any).at(format_args!("typed_per_filter_config[\"{key}\"]"))?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

fn per_filter_entry(any: &Any) -> Res<Option<Option<Fault>>> {
    // Route-level RBAC would replace the listener's policies for that route: refused rather than
    // ignored, so no route is allowed (or denied) by mistake.
    reject_if(
        type_name(any) == RbacPerRoute::full_name(),
        "",
        "per-route RBAC (RBACPerRoute) is not supported",
    )?;
    if type_name(any) == HttpFault::full_name() {
        return Ok(Some(Some(fault(&decode(any)?)?)));
    }
    if type_name(any) != FilterConfig::full_name() {
        return Ok(None);
    }
    let wrapper: FilterConfig = decode(any)?;
    match &wrapper.config {
        Some(inner) if type_name(inner) == HttpFault::full_name() => {
            if wrapper.disabled {
                return Ok(Some(None));
            }
            Ok(Some(Some(
                fault(&decode(inner).at("config")?).at("config")?,
            )))
        }
        _ => Ok(None),
    }
}

fn fault(f: &HttpFault) -> Res<Fault> {
    reject_if(
        !f.headers.is_empty(),
        "headers",
        "faults limited to matching headers are not supported",
    )?;
    reject_if(
        !f.upstream_cluster.is_empty(),
        "upstream_cluster",
        "faults limited to an upstream cluster are not supported",
    )?;
    reject_if(
        !f.downstream_nodes.is_empty(),
        "downstream_nodes",
        "faults limited to downstream nodes are not supported",
    )?;
    reject_if(
        f.response_rate_limit.is_some(),
        "response_rate_limit",
        "response rate limiting is not supported",
    )?;
    let delay = delay(f)?;
    let abort = abort(f)?;
    Ok(Fault { delay, abort })
}

fn delay(f: &HttpFault) -> Res<Option<(Duration, u32)>> {
    Ok(match &f.delay {
        None => None,
        Some(d) => {
            // Envoy: no percentage is 0 %.
            let share = d
                .percentage
                .as_ref()
                .map(ppm)
                .transpose()
                .at("delay.percentage")?
                .unwrap_or(0);
            let fixed = match &d.fault_delay_secifier {
                Some(FaultDelaySecifier::FixedDelay(fixed)) => {
                    positive(Some(fixed), Duration::ZERO).at("delay.fixed_delay")?
                }
                Some(FaultDelaySecifier::HeaderDelay(_)) => {
                    return Err(Invalid::new(
                        "delay.header_delay",
                        "delays chosen by request header are not supported",
                    ))
                }
                None => {
                    return Err(Invalid::new(
                        "delay.fixed_delay",
                        "a fixed_delay is required",
                    ))
                }
            };
            Some((fixed, share))
        }
    })
}

fn abort(f: &HttpFault) -> Res<Option<(u16, u32)>> {
    Ok(match &f.abort {
        None => None,
        Some(a) => {
            let share = a
                .percentage
                .as_ref()
                .map(ppm)
                .transpose()
                .at("abort.percentage")?
                .unwrap_or(0);
            let status = match &a.error_type {
                Some(ErrorType::HttpStatus(s)) => u16::try_from(*s)
                    .ok()
                    .filter(|s| (200..600).contains(s))
                    .ok_or_else(|| {
                        Invalid::new(
                            "abort.http_status",
                            format!("{s} is not an HTTP status in [200, 600)"),
                        )
                    })?,
                Some(ErrorType::GrpcStatus(_)) => {
                    return Err(Invalid::new(
                        "abort.grpc_status",
                        "gRPC status aborts are not supported; use http_status",
                    ))
                }
                Some(ErrorType::HeaderAbort(_)) => {
                    return Err(Invalid::new(
                        "abort.header_abort",
                        "aborts chosen by request header are not supported",
                    ))
                }
                None => {
                    return Err(Invalid::new(
                        "abort.http_status",
                        "an http_status is required",
                    ))
                }
            };
            Some((status, share))
        }
    })
}

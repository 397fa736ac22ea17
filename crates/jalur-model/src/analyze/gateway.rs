//! Gateway checks: servers, their hosts, ports and TLS.

use crate::diag::codes;
use crate::networking::{Gateway, Server, ServerTlsMode};
use crate::{Diagnostic, Resource};

use super::port_number;

pub(super) fn check(r: &Resource, gw: &Gateway, out: &mut Vec<Diagnostic>) {
    if gw.servers.is_empty() {
        let msg = "a Gateway needs at least one server (port, protocol, hosts)";
        out.push(r.diag(codes::GATEWAY_WITHOUT_SERVERS, "spec.servers", msg));
    }
    for (i, s) in gw.servers.iter().enumerate() {
        let sf = format!("spec.servers[{i}]");
        if s.hosts.is_empty() {
            let msg = "a server needs at least one host (`*` for any)";
            out.push(r.diag(codes::MISSING_HOSTS, &format!("{sf}.hosts"), msg));
        }
        port_number(r, &format!("{sf}.port.number"), s.port.number, out);
        if let Some(tp) = s.port.target_port {
            port_number(r, &format!("{sf}.port.targetPort"), tp, out);
        }
        server_tls(r, &sf, s, out);
    }
}

/// HTTPS and TLS servers terminate or pass through TLS, so they say how; terminating modes need a
/// certificate (files or a credential), mutual ones a CA too.
fn server_tls(r: &Resource, sf: &str, s: &Server, out: &mut Vec<Diagnostic>) {
    let protocol = s
        .port
        .protocol
        .as_deref()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let Some(tls) = &s.tls else {
        if protocol == "HTTPS" || protocol == "TLS" {
            let msg = format!(
                "a server with protocol {protocol} needs tls settings (mode and credentialName, or mode PASSTHROUGH)"
            );
            out.push(r.diag(
                codes::INCOMPLETE_TLS_SETTINGS,
                &format!("{sf}.port.protocol"),
                msg,
            ));
        }
        return;
    };
    let Some(mode) = tls.mode else { return };
    let terminates = matches!(
        mode,
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    );
    if !terminates || tls.credential_name.is_some() {
        return;
    }
    let mut missing = Vec::new();
    if tls.server_certificate.is_none() {
        missing.push("serverCertificate");
    }
    if tls.private_key.is_none() {
        missing.push("privateKey");
    }
    if mode != ServerTlsMode::Simple && tls.ca_certificates.is_none() {
        missing.push("caCertificates");
    }
    if !missing.is_empty() {
        let msg = format!(
            "tls mode {} without credentialName needs {}",
            mode_name(mode),
            missing.join(", ")
        );
        out.push(r.diag(
            codes::INCOMPLETE_TLS_SETTINGS,
            &format!("{sf}.tls.mode"),
            msg,
        ));
    }
}

fn mode_name(mode: ServerTlsMode) -> &'static str {
    match mode {
        ServerTlsMode::Passthrough => "PASSTHROUGH",
        ServerTlsMode::Simple => "SIMPLE",
        ServerTlsMode::Mutual => "MUTUAL",
        ServerTlsMode::AutoPassthrough => "AUTO_PASSTHROUGH",
        ServerTlsMode::IstioMutual => "ISTIO_MUTUAL",
        ServerTlsMode::OptionalMutual => "OPTIONAL_MUTUAL",
    }
}

//! Istio's AuthorizationPolicy condition keys (`when.key`), as jalur translates them: read by
//! the rule checks (`authz.rs`) and the scope checks (`authz_scope.rs`).

/// Istio's condition keys, as jalur translates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConditionKey {
    RequestHeader,
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    RequestPrincipal,
    RequestAudiences,
    RequestPresenter,
    RequestClaim,
    DestinationIp,
    DestinationPort,
    ConnectionSni,
}

impl ConditionKey {
    /// Parses a `when.key`; the error says what is wrong, for the message.
    pub(crate) fn parse(key: &str) -> Result<ConditionKey, String> {
        let simple = match key {
            "source.ip" => Some(ConditionKey::SourceIp),
            "remote.ip" => Some(ConditionKey::RemoteIp),
            "source.namespace" => Some(ConditionKey::SourceNamespace),
            "source.principal" => Some(ConditionKey::SourcePrincipal),
            "request.auth.principal" => Some(ConditionKey::RequestPrincipal),
            "request.auth.audiences" => Some(ConditionKey::RequestAudiences),
            "request.auth.presenter" => Some(ConditionKey::RequestPresenter),
            "destination.ip" => Some(ConditionKey::DestinationIp),
            "destination.port" => Some(ConditionKey::DestinationPort),
            "connection.sni" => Some(ConditionKey::ConnectionSni),
            _ => None,
        };
        if let Some(k) = simple {
            return Ok(k);
        }
        for (prefix, k) in [
            ("request.headers", ConditionKey::RequestHeader),
            ("request.auth.claims", ConditionKey::RequestClaim),
        ] {
            if let Some(rest) = key.strip_prefix(prefix) {
                return if bracketed(rest) {
                    Ok(k)
                } else {
                    Err(format!("write it as {prefix}[NAME]"))
                };
            }
        }
        Err(format!(
            "Istio's keys are request.headers[NAME], source.ip, remote.ip, source.namespace, source.principal, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[NAME], destination.ip, destination.port, connection.sni; {key:?} is none of them"
        ))
    }

    /// Keys only an HTTP request has; on a TCP port Istio drops (ALLOW) or removes (DENY) them.
    pub(crate) fn is_http_only(self) -> bool {
        matches!(
            self,
            ConditionKey::RequestHeader
                | ConditionKey::RequestPrincipal
                | ConditionKey::RequestAudiences
                | ConditionKey::RequestPresenter
                | ConditionKey::RequestClaim
        )
    }

    pub(crate) fn is_jwt(self) -> bool {
        matches!(
            self,
            ConditionKey::RequestPrincipal
                | ConditionKey::RequestAudiences
                | ConditionKey::RequestPresenter
                | ConditionKey::RequestClaim
        )
    }
}

/// `[NAME]` with a non-empty name, or nested claims `[a][b]`.
fn bracketed(rest: &str) -> bool {
    let Some(inner) = rest.strip_prefix('[').and_then(|s| s.strip_suffix(']')) else {
        return false;
    };
    inner
        .split("][")
        .all(|part| !part.is_empty() && !part.contains(['[', ']']))
}

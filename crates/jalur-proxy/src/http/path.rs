//! The connection manager's `normalize_path` (RFC 3986 §5.2.4 remove_dot_segments), applied to
//! a request's path before RBAC and routing, and forwarded normalized, as Envoy does. Without
//! it `/public/../admin` would pass a DENY on `/admin*` and reach a backend that resolves the
//! dots itself. A segment of dots written percent-encoded (`%2e`, `%2E`) counts as dots, as in
//! Envoy's canonicalizer. Written here because the URL crates normalize whole URLs (scheme and
//! host included) and decode more than Envoy does; this touches only the dot segments.

/// Rewrites the request's path in place when it has dot segments (the query is kept).
pub(super) fn normalize_request<B>(req: &mut http::Request<B>) {
    let Some(path) = normalize(req.uri().path()) else {
        return;
    };
    let with_query = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = req.uri().clone().into_parts();
    // The normalized path is made of the original's segments, so it parses as the original did.
    if let Ok(pq) = with_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// The normalized form of `path` (no query), or `None` when it has no dot segment.
pub(super) fn normalize(path: &str) -> Option<String> {
    if !path.split('/').any(|s| is_dots(s).is_some()) {
        return None;
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        match is_dots(segment) {
            Some(1) => trailing_slash = i == last,
            Some(_) => {
                out.pop();
                trailing_slash = i == last;
            }
            None => {
                out.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut normalized = String::with_capacity(path.len());
    for segment in &out {
        normalized.push('/');
        normalized.push_str(segment);
    }
    if trailing_slash || normalized.is_empty() {
        normalized.push('/');
    }
    Some(normalized)
}

/// `Some(1)` for `.`, `Some(2)` for `..` (either written with `%2e`), else `None`.
fn is_dots(segment: &str) -> Option<usize> {
    let mut rest = segment;
    let mut dots = 0;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            rest = r;
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case("%2e") {
            rest = &rest[3..];
        } else {
            return None;
        }
        dots += 1;
    }
    (1..=2).contains(&dots).then_some(dots)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn dot_segments_are_removed_as_rfc_3986_says() {
        for (path, want) in [
            ("/public/../admin", Some("/admin")),
            ("/a/./b", Some("/a/b")),
            ("/../admin", Some("/admin")),
            ("/a/b/..", Some("/a/")),
            ("/a/.", Some("/a/")),
            ("/..", Some("/")),
            ("/x/%2e%2E/admin", Some("/admin")),
            ("/x/%2e/y", Some("/x/y")),
            ("/a/b/../../c/", Some("/c/")),
            ("/a..b/c", None),
            ("/...", None),
            ("/admin", None),
            ("/", None),
        ] {
            assert_eq!(normalize(path).as_deref(), want, "{path}");
        }
    }
}

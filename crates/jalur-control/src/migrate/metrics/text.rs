//! Reading a proxy's `/stats/prometheus`: the Prometheus text format, OpenMetrics flavoured as
//! prometheus-client writes it (`# TYPE istio_requests counter` over `istio_requests_total`
//! samples, a final `# EOF`, escaped label values), and Envoy's classic one alike. Only what a
//! gate needs is kept: `istio_requests_total` and the `istio_request_duration_milliseconds`
//! buckets reported by callers (`reporter="source"`).

use std::collections::HashMap;
use std::fmt::Write as _;

const REQUESTS: &str = "istio_requests_total";
const DURATION_BUCKETS: &str = "istio_request_duration_milliseconds_bucket";

/// What a sample counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Kind {
    Requests,
    /// A cumulative latency bucket with this upper bound (ms; `+Inf` is infinity).
    Bucket {
        le: f64,
    },
}

/// One caller-reported sample, reduced to what a path's stats need.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Sample {
    pub destination_service: String,
    pub destination_version: String,
    /// 5xx, or a failing gRPC status.
    pub error: bool,
    pub kind: Kind,
    pub value: f64,
}

/// Samples by series identity (the metric name and all its labels, sorted), so two scrapes of
/// one proxy can be subtracted series by series.
pub(super) type Samples = HashMap<String, Sample>;

/// A line of one of the kept metrics that cannot be read (other metrics are not looked at).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub(super) struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// The caller-reported request counters and latency buckets in `text`.
pub(super) fn parse(text: &str) -> Result<Samples, ParseError> {
    let mut samples = Samples::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim_start();
        let name_end = line
            .find(|c: char| c == '{' || c.is_ascii_whitespace())
            .unwrap_or(line.len());
        let name = &line[..name_end];
        if name != REQUESTS && name != DURATION_BUCKETS {
            continue;
        }
        let fail = |reason: String| ParseError {
            line: index + 1,
            reason: format!("{name}: {reason}"),
        };
        let (labels, rest) = parse_labels(&line[name_end..]).map_err(fail)?;
        let value = parse_value(rest).map_err(fail)?;
        if let Some((id, sample)) = reduce(name, labels, value).map_err(fail)? {
            samples.insert(id, sample);
        }
    }
    Ok(samples)
}

/// Label names and their unescaped values, in the order written.
type Labels<'a> = Vec<(&'a str, String)>;

/// `{a="x",b="y\"z"} rest` → the labels, unescaped, and what follows the `}`.
fn parse_labels(text: &str) -> Result<(Labels<'_>, &str), String> {
    let mut labels = Vec::new();
    let Some(mut rest) = text.strip_prefix('{') else {
        return Ok((labels, text));
    };
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("label without a value near {:?}", clip(rest)))?;
        let name = rest[..eq].trim();
        if name.is_empty() {
            return Err(format!("empty label name near {:?}", clip(rest)));
        }
        let quoted = rest[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| format!("label {name}: value is not quoted"))?;
        let (value, after) =
            unescape(quoted).ok_or_else(|| format!("label {name}: unterminated value"))?;
        labels.push((name, value));
        rest = after;
    }
}

/// Reads a label value up to its closing quote: the value and what follows the quote.
fn unescape(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other => value.push(other),
            },
            other => value.push(other),
        }
    }
    None
}

/// The sample value: the first field after the labels (a timestamp or an OpenMetrics exemplar
/// may follow).
fn parse_value(rest: &str) -> Result<f64, String> {
    let field = rest.split_ascii_whitespace().next().ok_or("no value")?;
    parse_float(field).ok_or_else(|| format!("value {field:?} is not a number"))
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

/// Keeps a caller-reported sample under its series identity; `None` for other reporters.
fn reduce(
    name: &str,
    mut labels: Labels<'_>,
    value: f64,
) -> Result<Option<(String, Sample)>, String> {
    let get = |labels: &[(&str, String)], key: &str| {
        labels
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| value.clone())
    };
    if get(&labels, "reporter").as_deref() != Some("source") {
        return Ok(None);
    }
    let kind = if name == REQUESTS {
        Kind::Requests
    } else {
        let le = get(&labels, "le").ok_or("a bucket without an le label")?;
        let le = parse_float(&le).ok_or_else(|| format!("le {le:?} is not a number"))?;
        Kind::Bucket { le }
    };
    let sample = Sample {
        destination_service: get(&labels, "destination_service").unwrap_or_default(),
        destination_version: get(&labels, "destination_version").unwrap_or_default(),
        error: super::is_error(
            &get(&labels, "response_code").unwrap_or_default(),
            &get(&labels, "grpc_response_status").unwrap_or_default(),
        ),
        kind,
        value,
    };
    labels.sort();
    let mut id = String::from(name);
    for (label, value) in &labels {
        // Debug quoting keeps the identity unambiguous whatever the values hold.
        let _ = write!(id, " {label}={value:?}");
    }
    Ok(Some((id, sample)))
}

fn clip(text: &str) -> &str {
    let end = text.char_indices().nth(40).map_or(text.len(), |(i, _)| i);
    &text[..end]
}

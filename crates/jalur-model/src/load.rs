//! Reading config: files and directories of multi-document YAML into [`Resource`]s, with every
//! failure turned into a [`Diagnostic`] that names file, line, resource and field.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;

use crate::diag::{codes, Code, Diagnostic};
use crate::span::SpanIndex;
use crate::{Config, Kind, Meta, Origin, Resource, ResourceRef, Spec};

/// The result of loading: the resources that parsed, and everything that went wrong.
/// A caller that must not serve a partial config checks [`Loaded::has_errors`].
#[derive(Debug, Default)]
pub struct Loaded {
    pub config: Config,
    pub diagnostics: Vec<Diagnostic>,
    pub files: Vec<PathBuf>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Loads files and directories (recursively; `*.yaml` and `*.yml`, in name order).
pub fn load_paths(paths: &[PathBuf]) -> Loaded {
    let mut loaded = Loaded::default();
    let mut files = Vec::new();
    for path in paths {
        if let Err(e) = collect_files(path, &mut files) {
            loaded.diagnostics.push(
                Diagnostic::new(codes::UNREADABLE_FILE, format!("cannot read: {e}")).at(path, None),
            );
        }
    }
    let mut resources = Vec::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => {
                let (mut found, mut diags) = parse_str(file, &text);
                resources.append(&mut found);
                loaded.diagnostics.append(&mut diags);
            }
            Err(e) => loaded.diagnostics.push(
                Diagnostic::new(codes::UNREADABLE_FILE, format!("cannot read: {e}")).at(file, None),
            ),
        }
    }
    loaded.config = Config::new(resources);
    loaded.files = files;
    loaded
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !path.is_dir() {
        std::fs::metadata(path)?;
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        let hidden = entry
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if entry.is_dir() {
            collect_files(&entry, out)?;
        } else if entry.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(entry);
        }
    }
    Ok(())
}

/// Parses one file's text. Documents that fail are reported and skipped; the others are kept.
pub fn parse_str(file: &Path, text: &str) -> (Vec<Resource>, Vec<Diagnostic>) {
    let mut resources = Vec::new();
    let mut diags = Vec::new();
    for (first_line, doc) in split_documents(text) {
        if is_blank(doc) {
            continue;
        }
        match parse_document(file, first_line, doc) {
            Ok(r) => resources.push(r),
            Err(d) => diags.push(*d),
        }
    }
    (resources, diags)
}

/// Splits a YAML stream at `---` / `...` lines, keeping each document's first line number.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start_byte = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        let is_marker = trimmed == "---"
            || trimmed.starts_with("--- ")
            || trimmed.starts_with("---\t")
            || trimmed == "...";
        if is_marker {
            docs.push((start_line, &text[start_byte..offset]));
            start_byte = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start_byte..]));
    docs
}

fn is_blank(doc: &str) -> bool {
    doc.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#')
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<yaml_serde::Value>,
    spec: Option<yaml_serde::Value>,
    #[allow(dead_code)]
    status: Option<IgnoredAny>,
}

type DocResult = Result<Resource, Box<Diagnostic>>;

fn parse_document(file: &Path, first_line: usize, doc: &str) -> DocResult {
    let spans = Arc::new(SpanIndex::build(doc, first_line));
    let origin = Origin {
        file: file.to_path_buf(),
        line: first_line,
        spans,
    };
    let at = |code: Code, field: &str, msg: String| {
        Box::new(
            Diagnostic::new(code, msg)
                .at(file, Some(origin.line_of(field)))
                .field(field.to_string()),
        )
    };

    let envelope: Envelope = match yaml_serde::from_str(doc) {
        Ok(e) => e,
        Err(e) => return Err(Box::new(yaml_error(file, first_line, &e))),
    };
    let api_version = envelope.api_version.unwrap_or_default();
    let kind_name = envelope.kind.unwrap_or_default();
    let kind = match Kind::parse(&kind_name) {
        Some(k) => k,
        None if kind_name.is_empty() => {
            return Err(at(codes::UNKNOWN_KIND, "kind", "missing `kind`".into()));
        }
        None => {
            let known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            let msg = format!(
                "unknown kind {kind_name:?}; jalur understands {}",
                known.join(", ")
            );
            return Err(at(codes::UNKNOWN_KIND, "kind", msg));
        }
    };
    check_api_version(kind, &api_version).map_err(|m| at(codes::UNKNOWN_KIND, "apiVersion", m))?;

    let Some(meta_value) = envelope.metadata else {
        return Err(at(
            codes::INVALID_METADATA,
            "metadata",
            "missing `metadata.name`".into(),
        ));
    };
    let meta: Meta = typed(meta_value)
        .map_err(|(path, msg)| at(codes::INVALID_METADATA, &join("metadata", &path), msg))?;
    let reference = ResourceRef {
        kind,
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
    };
    let with_ref = |d: Box<Diagnostic>| Box::new(d.on(reference.clone()));
    if let Err(msg) = check_name(&meta.name).and_then(|_| check_name(&meta.namespace)) {
        return Err(with_ref(at(codes::INVALID_METADATA, "metadata", msg)));
    }

    let spec_value = envelope.spec.unwrap_or(yaml_serde::Value::Null);
    if spec_value.is_null() {
        return Err(with_ref(at(
            codes::INVALID_FIELD,
            "spec",
            "missing `spec`".into(),
        )));
    }
    let spec = typed_spec(kind, spec_value)
        .map_err(|(path, msg)| with_ref(at(codes::INVALID_FIELD, &join("spec", &path), msg)))?;
    Ok(Resource {
        api_version,
        meta,
        spec,
        origin,
    })
}

fn typed_spec(kind: Kind, value: yaml_serde::Value) -> Result<Spec, (String, String)> {
    Ok(match kind {
        Kind::VirtualService => Spec::VirtualService(typed(value)?),
        Kind::DestinationRule => Spec::DestinationRule(typed(value)?),
        Kind::ServiceEntry => Spec::ServiceEntry(typed(value)?),
        Kind::WorkloadEntry => Spec::WorkloadEntry(typed(value)?),
        Kind::Gateway => Spec::Gateway(typed(value)?),
        Kind::Sidecar => Spec::Sidecar(typed(value)?),
        Kind::ConsulRegistry => Spec::ConsulRegistry(typed(value)?),
        Kind::Migration => Spec::Migration(typed(value)?),
        Kind::PeerAuthentication => Spec::PeerAuthentication(typed(value)?),
        Kind::AuthorizationPolicy => Spec::AuthorizationPolicy(typed(value)?),
        Kind::RequestAuthentication => Spec::RequestAuthentication(typed(value)?),
    })
}

/// Deserializes with the failing field's path (`http[0].route[1].weight`) kept for the message.
fn typed<T: DeserializeOwned>(value: yaml_serde::Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        (path, e.into_inner().to_string())
    })
}

fn join(prefix: &str, path: &str) -> String {
    if path.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}.{path}")
    }
}

fn yaml_error(file: &Path, first_line: usize, e: &yaml_serde::Error) -> Diagnostic {
    let line = e
        .location()
        .map(|l| l.line() + first_line - 1)
        .unwrap_or(first_line);
    // yaml_serde counts lines from the document's start; say the file's line instead.
    let text = shift_lines(&e.to_string(), first_line - 1);
    // Envelope-level unknown fields are schema errors, anything else is broken YAML.
    let code = if text.contains("unknown field") {
        codes::INVALID_FIELD
    } else {
        codes::YAML_SYNTAX
    };
    Diagnostic::new(code, text).at(file, Some(line))
}

fn shift_lines(message: &str, offset: usize) -> String {
    let mut out = String::new();
    let mut rest = message;
    while let Some(at) = rest.find("line ") {
        let (head, tail) = rest.split_at(at + 5);
        out.push_str(head);
        let digits = tail
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(tail.len());
        match tail[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&tail[..digits]),
        }
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

fn check_api_version(kind: Kind, api_version: &str) -> Result<(), String> {
    let ok = api_version
        .split_once('/')
        .is_some_and(|(g, v)| g == kind.group() && kind.versions().contains(&v));
    if ok {
        Ok(())
    } else {
        let (first, rest) = kind
            .versions()
            .split_first()
            .map(|(f, r)| (*f, r.join(", ")))
            .unwrap_or(("v1", String::new()));
        let also = if rest.is_empty() {
            String::new()
        } else {
            format!(" ({rest} accepted too)")
        };
        Err(format!(
            "apiVersion {api_version:?} is not supported for {kind}; use {}/{first}{also}",
            kind.group()
        ))
    }
}

/// Kubernetes object names: DNS-1123 subdomain (lowercase alphanumerics, '-' and '.').
fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: names and namespaces must be lowercase alphanumerics, '-' or '.', starting and ending with an alphanumeric"
        ))
    }
}

#[cfg(test)]
mod tests;

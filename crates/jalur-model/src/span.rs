//! Where each field of a YAML document sits: a map from field path (`spec.http[0].route[1].weight`,
//! the same form serde_path_to_error prints) to its 1-based line, so every error names a line.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser};

#[derive(Debug, Clone, Default)]
pub struct SpanIndex {
    lines: HashMap<String, usize>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

impl SpanIndex {
    /// Builds the index for one document. `first_line` is the document's line in its file (1-based);
    /// a syntax error stops indexing but keeps what was seen, since the parse error itself is
    /// reported by the deserializer.
    pub fn build(doc: &str, first_line: usize) -> SpanIndex {
        let mut lines = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        for item in Parser::new_from_str(doc) {
            let Ok((event, span)) = item else { break };
            let line = span.start.line() + first_line - 1;
            match event {
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Map { path, key }) = stack.last_mut() {
                        if key.is_none() {
                            let child = join(path, &value);
                            lines.insert(child, line);
                            *key = Some(value.into_owned());
                            continue;
                        }
                    }
                    value_seen(&mut stack, &mut lines, line);
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let path = value_seen(&mut stack, &mut lines, line);
                    lines.entry(path.clone()).or_insert(line);
                    stack.push(match event {
                        Event::MappingStart(..) => Frame::Map { path, key: None },
                        _ => Frame::Seq { path, next: 0 },
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                Event::Alias(..) => {
                    value_seen(&mut stack, &mut lines, line);
                }
                _ => {}
            }
        }
        SpanIndex { lines }
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(line) = self.lines.get(p) {
                return Some(*line);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

/// A value (scalar or container start) appears in the current frame: returns its path and
/// advances the frame (a map goes back to expecting a key, a sequence to its next index).
fn value_seen(stack: &mut [Frame], lines: &mut HashMap<String, usize>, line: usize) -> String {
    match stack.last_mut() {
        None => String::new(),
        Some(Frame::Map { path, key }) => {
            let k = key.take().unwrap_or_default();
            join(path, &k)
        }
        Some(Frame::Seq { path, next }) => {
            let child = format!("{path}[{next}]");
            *next += 1;
            lines.entry(child.clone()).or_insert(line);
            child
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_nested_paths() {
        let doc = "kind: VirtualService\nspec:\n  http:\n  - route:\n    - destination:\n        host: a\n      weight: 90\n    - destination:\n        host: b\n";
        let idx = SpanIndex::build(doc, 10);
        assert_eq!(idx.line_of("kind"), Some(10));
        assert_eq!(idx.line_of("spec.http[0].route[0].weight"), Some(16));
        assert_eq!(
            idx.line_of("spec.http[0].route[1].destination.host"),
            Some(18)
        );
        // Unknown leaf falls back to its nearest ancestor.
        assert_eq!(
            idx.line_of("spec.http[0].route[1].destination.nope"),
            Some(17)
        );
    }
}

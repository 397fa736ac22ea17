//! Offline analyzers behind `jalur analyze` (filled in separately).

use crate::{Config, Diagnostic};

/// Runs every analyzer over a loaded config.
pub fn analyze(_config: &Config) -> Vec<Diagnostic> {
    Vec::new()
}

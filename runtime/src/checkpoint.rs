//! Checkpoints: a session's variables saved as a safetensors file (one
//! tensor per variable, named after it) and restored into a session of the
//! same graph. Saving is atomic (temp file, fsync, rename), so a crash
//! mid-save leaves the previous checkpoint intact.
//!
//! The metadata key `kiln.checkpoint` marks a checkpoint; its value is JSON
//! `{"version":1,"crc32c":{NAME:HEX,...}}`, the CRC-32C of each tensor's
//! bytes, checked on restore (checkpoints written before checksums hold
//! just `1` and restore unchecked).

use std::path::Path;

use kiln_graph::format::{
    checksums, read_regular_file, tensors_from_bytes, tensors_to_bytes, write_atomic,
};
use kiln_graph::Array;

use crate::error::{Error, Result};
use crate::session::Session;

/// The metadata key marking a kiln checkpoint, and its format version.
const KEY: &str = "kiln.checkpoint";
const VERSION: u32 = 1;

impl Session {
    /// Saves every variable's current value to `path`, atomically.
    pub fn save_checkpoint(&self, path: impl AsRef<Path>) -> Result<()> {
        let vars = self.variables_by_name()?;
        let refs: Vec<(&str, &Array)> = vars.iter().map(|(n, a)| (n.as_str(), a)).collect();
        let marker = serde_json::json!({"version": VERSION, "crc32c": checksums(&refs)});
        let bytes = tensors_to_bytes(&refs, KEY, &marker.to_string())?;
        Ok(write_atomic(path.as_ref(), &bytes)?)
    }

    /// Restores every variable from a checkpoint of this graph. Nothing
    /// changes unless the checkpoint holds exactly this graph's variables
    /// with their dtypes and shapes; otherwise the error lists every difference.
    pub fn restore_checkpoint(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let bytes = read_regular_file(path).map_err(|e| Error::io("reading", path, e))?;
        let (tensors, marker) = tensors_from_bytes(&bytes, &shown, KEY)?;
        if marker.is_none() {
            return Err(Error::Checkpoint {
                path: shown,
                problems: vec!["not a kiln checkpoint (no kiln.checkpoint metadata)".into()],
            });
        }
        let mut problems = Vec::new();
        let ours = self.variables_by_name()?;
        for (name, current) in &ours {
            match tensors.get(name) {
                None => problems.push(format!(
                    "variable '{name}' ({}{:?}) is missing",
                    current.dtype(),
                    current.shape()
                )),
                Some(t) if t.dtype() != current.dtype() || t.shape() != current.shape() => problems
                    .push(format!(
                        "variable '{name}' is {}{:?} in the checkpoint but {}{:?} in the graph",
                        t.dtype(),
                        t.shape(),
                        current.dtype(),
                        current.shape()
                    )),
                Some(_) => {}
            }
        }
        for (name, t) in &tensors {
            if !ours.iter().any(|(n, _)| n == name) {
                problems.push(format!(
                    "'{name}' ({}{:?}) is not a variable of this graph",
                    t.dtype(),
                    t.shape()
                ));
            }
        }
        if !problems.is_empty() {
            return Err(Error::Checkpoint {
                path: shown,
                problems,
            });
        }
        for (name, value) in tensors {
            self.set_variable(&name, value)?;
        }
        Ok(())
    }
}

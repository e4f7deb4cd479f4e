//! The files a mapping set is compiled from, each read once.
//!
//! Mapping files are given to the compiler as text; the table files they name are read
//! through [`Sources::read`], which keeps the text it read. The set's version is the hash
//! of exactly these texts — the bytes that were compiled, not a second read of the disk that
//! could see a file changed in between.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// Every file a compilation read, with its text.
#[derive(Debug, Default)]
pub struct Sources {
    /// Mapping files, in the order given.
    mappings: Vec<(PathBuf, Arc<str>)>,
    /// Table files by path, as read (or why they could not be).
    tables: BTreeMap<PathBuf, Result<Arc<str>, String>>,
}

impl Sources {
    /// Records a mapping file's text.
    pub fn add_mapping(&mut self, path: &Path, text: &str) -> Arc<str> {
        let t: Arc<str> = Arc::from(text);
        self.mappings.push((path.to_path_buf(), t.clone()));
        t
    }

    /// The text of a table file, read on first use; the error says why it cannot be read
    /// (no file content: it may hold anything).
    pub fn read(&mut self, path: &Path) -> Result<Arc<str>, String> {
        let key = normalize(path);
        self.tables
            .entry(key)
            .or_insert_with(|| match std::fs::read(path) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(t) => Ok(Arc::from(t)),
                    Err(e) => {
                        let (pos, what) = super::diag::not_utf8_at(e.as_bytes(), e.utf8_error());
                        Err(format!("{what} at {pos}"))
                    }
                },
                Err(e) => Err(e.kind().to_string()),
            })
            .clone()
    }

    /// `sha256:` and 16 hex digits over the file names and texts of every mapping (in the
    /// order given) and every table file read (in path order).
    pub fn version(&self) -> String {
        let mut hash = Sha256::new();
        for (path, text) in &self.mappings {
            hash.update(file_name(path));
            hash.update([0]);
            hash.update(text.as_bytes());
            hash.update([0]);
        }
        for (path, text) in &self.tables {
            if let Ok(text) = text {
                hash.update(file_name(path));
                hash.update([0]);
                hash.update(text.as_bytes());
                hash.update([0]);
            }
        }
        let digest = hash.finalize();
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `a/b/../c` and `a/./c` name the same file: one read, one entry in the hash.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

//! Digests of weight files, cached by (size, modification time): hashing a
//! file of hundreds of megabytes on every listing would cost seconds, and
//! a file replaced under the same name gets another size or time.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Debug, Default)]
pub(crate) struct DigestCache {
    digests: Mutex<HashMap<PathBuf, (u64, SystemTime, String)>>,
}

impl DigestCache {
    /// `path`'s size and digest, computing the digest with `hash` only
    /// when the file changed since it was last asked.
    pub(crate) fn get(
        &self,
        path: &Path,
        hash: impl FnOnce(&Path) -> io::Result<String>,
    ) -> io::Result<(u64, String)> {
        let meta = std::fs::metadata(path)?;
        let modified = meta.modified()?;
        let mut cache = self.digests.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((bytes, when, digest)) = cache.get(path) {
            if *bytes == meta.len() && *when == modified {
                return Ok((*bytes, digest.clone()));
            }
        }
        let digest = hash(path)?;
        cache.insert(path.to_path_buf(), (meta.len(), modified, digest.clone()));
        Ok((meta.len(), digest))
    }
}

//! A library's folders: the data dir's own one first, then other programs'
//! folders of the same kind that `[model_scan]` found (ComfyUI's
//! `models/loras`, A1111's `models/ESRGAN`, …). A name found in several is
//! the first folder's. Another program's folder may go away while we run;
//! ours may not, so only its read errors are reported.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use crate::StoreError;

#[derive(Debug)]
pub(crate) struct FolderSet {
    own: PathBuf,
    extra: RwLock<Vec<PathBuf>>,
}

impl FolderSet {
    /// The set of `own` alone, created when missing.
    pub(crate) fn open(own: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(own).map_err(|source| StoreError::Write {
            path: own.to_path_buf(),
            source,
        })?;
        Ok(Self {
            own: own.to_path_buf(),
            extra: RwLock::default(),
        })
    }

    pub(crate) fn own(&self) -> &Path {
        &self.own
    }

    /// Reads `folder` too, after those already in the set.
    pub(crate) fn add(&self, folder: PathBuf) {
        let mut extra = self.extra.write().unwrap_or_else(|e| e.into_inner());
        if folder != self.own && !extra.contains(&folder) {
            extra.push(folder);
        }
    }

    /// Every folder, in the order names are looked up.
    pub(crate) fn all(&self) -> Vec<PathBuf> {
        let extra = self.extra.read().unwrap_or_else(|e| e.into_inner());
        std::iter::once(self.own.clone())
            .chain(extra.iter().cloned())
            .collect()
    }

    /// The names of the plain files in every folder, folder by folder
    /// (duplicates kept: the caller decides which names count).
    pub(crate) fn file_names(&self) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        for (i, folder) in self.all().iter().enumerate() {
            let read_error = |source: io::Error| StoreError::Read {
                path: folder.clone(),
                source,
            };
            let entries = match std::fs::read_dir(folder) {
                Ok(entries) => entries,
                Err(_) if i > 0 => continue,
                Err(e) => return Err(read_error(e)),
            };
            for entry in entries {
                let entry = entry.map_err(read_error)?;
                if entry.path().is_file() {
                    names.push(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        Ok(names)
    }

    /// The first of `file_names` (tried in order in each folder) that is a
    /// file in some folder, the own folder first.
    pub(crate) fn find<'a>(
        &self,
        file_names: impl Iterator<Item = &'a str> + Clone,
    ) -> Option<PathBuf> {
        self.all()
            .iter()
            .flat_map(|folder| file_names.clone().map(move |name| folder.join(name)))
            .find(|path| path.is_file())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_folder_comes_first_and_a_vanished_one_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let set = FolderSet::open(&dir.path().join("own")).unwrap();
        let other = dir.path().join("other");
        std::fs::create_dir_all(other.join("sub")).unwrap();
        std::fs::write(set.own().join("a.pth"), b"1").unwrap();
        std::fs::write(other.join("a.pth"), b"2").unwrap();
        std::fs::write(other.join("b.pth"), b"3").unwrap();
        set.add(other.clone());
        set.add(other.clone());
        set.add(set.own().to_path_buf());
        assert_eq!(set.all().len(), 2);
        let mut names = set.file_names().unwrap();
        names.sort();
        assert_eq!(names, ["a.pth", "a.pth", "b.pth"], "folders are not files");
        assert_eq!(
            set.find(["a.safetensors", "a.pth"].into_iter()),
            Some(set.own().join("a.pth"))
        );
        assert_eq!(
            set.find(std::iter::once("b.pth")),
            Some(other.join("b.pth"))
        );
        assert_eq!(set.find(std::iter::once("c.pth")), None);
        std::fs::remove_dir_all(&other).unwrap();
        assert_eq!(set.file_names().unwrap(), ["a.pth"]);
        std::fs::remove_dir_all(set.own()).unwrap();
        assert!(
            set.file_names().is_err(),
            "our own folder's loss is an error"
        );
    }
}

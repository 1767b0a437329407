//! The data dir's `upscalers/` folder: super-resolution networks as people
//! download them (`NAME.safetensors` or `NAME.pth`, the way ComfyUI's
//! `models/upscale_models` holds them), plus the ones built into the
//! binary, which the server registers at start, and other programs'
//! upscaler folders that `[model_scan]` found. Listed by name with size
//! and SHA-256 (of the whole file, as OpenModelDB lists them; cached by
//! size and modification time). A file in the folder takes precedence over
//! a built-in of the same name.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use cyberimage_core::upscale::check_upscaler_name;
use sha2::{Digest, Sha256};

use crate::digest_cache::DigestCache;
use crate::folder_set::FolderSet;
use crate::StoreError;

/// The extensions read, in order of preference for a name with both.
pub const EXTENSIONS: [&str; 2] = ["safetensors", "pth"];

/// One upscaler file.
#[derive(Clone, Debug, PartialEq)]
pub struct UpscalerFile {
    pub name: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    /// Compiled into the binary rather than dropped in the folder.
    pub builtin: bool,
}

#[derive(Debug)]
pub struct UpscalerLibrary {
    folders: FolderSet,
    builtin: RwLock<Vec<(String, PathBuf)>>,
    digests: DigestCache,
}

fn file_sha256(path: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}

impl UpscalerLibrary {
    /// The library in `folder` (created when missing).
    pub fn open(folder: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            folders: FolderSet::open(folder)?,
            builtin: RwLock::default(),
            digests: DigestCache::default(),
        })
    }

    pub fn folder(&self) -> &Path {
        self.folders.own()
    }

    /// Reads upscalers from `folder` too (another program's upscaler
    /// folder), after the library's own.
    pub fn add_folder(&self, folder: PathBuf) {
        self.folders.add(folder);
    }

    /// Adds a built-in upscaler whose file the engine wrote out at `path`.
    pub fn register_builtin(&self, name: &str, path: PathBuf) {
        let mut builtin = self.builtin.write().unwrap_or_else(|e| e.into_inner());
        builtin.retain(|(n, _)| n != name);
        builtin.push((name.to_string(), path));
    }

    /// Every upscaler, by name: the folder's files, then the built-in ones
    /// no file shadows.
    pub fn list(&self) -> Result<Vec<UpscalerFile>, StoreError> {
        let mut names: Vec<String> = Vec::new();
        for file_name in self.folders.file_names()? {
            let Some((name, ext)) = file_name.rsplit_once('.') else {
                continue;
            };
            if EXTENSIONS.contains(&ext)
                && check_upscaler_name(name).is_ok()
                && !names.iter().any(|n| n == name)
            {
                names.push(name.to_string());
            }
        }
        let builtin: Vec<String> = self
            .builtin
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| !names.contains(n))
            .collect();
        names.extend(builtin);
        names.sort();
        let mut found = Vec::new();
        for name in names {
            if let Some(file) = self.find(&name)? {
                found.push(file);
            }
        }
        Ok(found)
    }

    /// The upscaler called `name`, if there is one.
    pub fn find(&self, name: &str) -> Result<Option<UpscalerFile>, StoreError> {
        if check_upscaler_name(name).is_err() {
            return Ok(None);
        }
        let candidates: Vec<String> = EXTENSIONS
            .iter()
            .map(|ext| format!("{name}.{ext}"))
            .collect();
        let in_folder = self.folders.find(candidates.iter().map(String::as_str));
        let (path, builtin) = match in_folder {
            Some(path) => (path, false),
            None => {
                let builtin = self.builtin.read().unwrap_or_else(|e| e.into_inner());
                match builtin.iter().find(|(n, _)| n == name) {
                    Some((_, path)) => (path.clone(), true),
                    None => return Ok(None),
                }
            }
        };
        let (bytes, sha256) =
            self.digests
                .get(&path, file_sha256)
                .map_err(|source| StoreError::Read {
                    path: path.clone(),
                    source,
                })?;
        Ok(Some(UpscalerFile {
            name: name.to_string(),
            path,
            bytes,
            sha256,
            builtin,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_files_and_builtins_with_files_first() {
        let dir = tempfile::tempdir().unwrap();
        let library = UpscalerLibrary::open(&dir.path().join("upscalers")).unwrap();
        let folder = library.folder().to_path_buf();
        std::fs::write(folder.join("4x-Sharp.pth"), b"abc").unwrap();
        std::fs::write(folder.join("notes.txt"), b"no").unwrap();
        std::fs::write(folder.join(".hidden.pth"), b"no").unwrap();
        let builtin = dir.path().join("net.safetensors");
        std::fs::write(&builtin, b"xyz").unwrap();
        library.register_builtin("net", builtin.clone());
        library.register_builtin("4x-Sharp", builtin.clone());
        let listed = library.list().unwrap();
        let names: Vec<_> = listed
            .iter()
            .map(|f| (f.name.as_str(), f.builtin))
            .collect();
        assert_eq!(names, [("4x-Sharp", false), ("net", true)]);
        // sha256("abc"), of the whole file.
        assert_eq!(
            listed[0].sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(listed[1].path, builtin);
        assert!(library.find("../etc/passwd").unwrap().is_none());
        // Another program's folder, read after ours.
        let comfy = dir.path().join("upscale_models");
        std::fs::create_dir_all(&comfy).unwrap();
        std::fs::write(comfy.join("4x-Sharp.pth"), b"another").unwrap();
        std::fs::write(comfy.join("RealESRGAN_x4plus.pth"), b"real").unwrap();
        library.add_folder(comfy.clone());
        let names: Vec<_> = library
            .list()
            .unwrap()
            .into_iter()
            .map(|f| (f.name, f.path))
            .collect();
        assert_eq!(names[0], ("4x-Sharp".into(), folder.join("4x-Sharp.pth")));
        assert_eq!(
            names[1],
            (
                "RealESRGAN_x4plus".into(),
                comfy.join("RealESRGAN_x4plus.pth")
            )
        );
        assert_eq!(names.len(), 3);
        assert!(library.find("missing").unwrap().is_none());
    }
}

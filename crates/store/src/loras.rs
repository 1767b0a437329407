//! The data dir's `loras/` folder: the LoRA files a user drops there
//! (`NAME.safetensors`), listed with their size and digest, and looked up
//! by name; then other programs' LoRA folders `[model_scan]` found. The
//! digest is the SHA-256 of the file's tensor data (the bytes
//! after its safetensors header), which is what AUTOMATIC1111 writes as a
//! picture's `Lora hashes` (its first 12 hex digits) and what Civitai calls
//! AutoV3, so a file whose metadata was edited keeps its hash. Digests are
//! cached by (size, modification time).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use cyberimage_core::lora::check_lora_name;
use sha2::{Digest, Sha256};

use crate::digest_cache::DigestCache;
use crate::folder_set::FolderSet;
use crate::StoreError;

/// One file of the folder.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraInfo {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug)]
pub struct LoraLibrary {
    folders: FolderSet,
    digests: DigestCache,
}

const EXTENSION: &str = ".safetensors";
/// Largest safetensors header read (real ones are well under 1 MB).
const MAX_HEADER: u64 = 64 << 20;

impl LoraLibrary {
    /// The library in `folder` (created when missing).
    pub fn open(folder: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            folders: FolderSet::open(folder)?,
            digests: DigestCache::default(),
        })
    }

    pub fn folder(&self) -> &Path {
        self.folders.own()
    }

    /// Reads LoRAs from `folder` too, after the library's own (a name
    /// found in both is the own folder's).
    pub fn add_folder(&self, folder: PathBuf) {
        self.folders.add(folder);
    }

    /// Every folder read, the own one first.
    pub fn folders(&self) -> Vec<PathBuf> {
        self.folders.all()
    }

    /// Every `*.safetensors` file whose name is a valid LoRA name, by name.
    pub fn list(&self) -> Result<Vec<LoraInfo>, StoreError> {
        let names: BTreeSet<String> = self
            .folders
            .file_names()?
            .iter()
            .filter_map(|file| file.strip_suffix(EXTENSION))
            .filter(|name| check_lora_name(name).is_ok())
            .map(str::to_string)
            .collect();
        names.iter().map(|name| self.info(name)).collect()
    }

    /// The file of a (checked) name, when it exists.
    pub fn path_of(&self, name: &str) -> Option<PathBuf> {
        check_lora_name(name).ok()?;
        let file = format!("{name}{EXTENSION}");
        self.folders.find(std::iter::once(file.as_str()))
    }

    /// Name, size and digest of the file `name` (which must exist).
    pub fn info(&self, name: &str) -> Result<LoraInfo, StoreError> {
        let path = self.path_of(name).ok_or_else(|| StoreError::Read {
            path: self.folder().join(format!("{name}{EXTENSION}")),
            source: io::Error::new(io::ErrorKind::NotFound, "no such LoRA"),
        })?;
        let (bytes, sha256) = self
            .digests
            .get(&path, tensor_data_sha256)
            .map_err(|source| StoreError::Read {
                path: path.clone(),
                source,
            })?;
        Ok(LoraInfo {
            name: name.to_string(),
            bytes,
            sha256,
        })
    }
}

/// A safetensors file opened past its 8-byte length field, and the
/// length of the JSON header that follows (checked against `MAX_HEADER`).
fn open_header(path: &Path) -> io::Result<(File, u64)> {
    let mut file = File::open(path)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let header = u64::from_le_bytes(len);
    if header > MAX_HEADER {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a safetensors file (a {header}-byte header)"),
        ));
    }
    Ok((file, header))
}

/// SHA-256 (hex) of a safetensors file's bytes after its header.
pub fn tensor_data_sha256(path: &Path) -> io::Result<String> {
    let (mut file, header) = open_header(path)?;
    file.seek(SeekFrom::Start(8 + header))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// The tensor names in a safetensors file's header.
pub fn tensor_names(path: &Path) -> io::Result<BTreeSet<String>> {
    let (mut file, header) = open_header(path)?;
    let mut bytes = vec![0u8; header as usize];
    file.read_exact(&mut bytes)?;
    let parsed: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes)
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a safetensors file: {e}"),
            )
        })?;
    Ok(parsed
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k != "__metadata__")
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    #[test]
    fn other_programs_folders_are_read_after_ours() {
        let dir = tempfile::tempdir().unwrap();
        let library = LoraLibrary::open(&dir.path().join("loras")).unwrap();
        let comfy = dir.path().join("ComfyUI/models/loras");
        std::fs::create_dir_all(&comfy).unwrap();
        std::fs::write(
            library.folder().join("mine.safetensors"),
            safetensors("{}", b"a"),
        )
        .unwrap();
        std::fs::write(comfy.join("mine.safetensors"), safetensors("{}", b"b")).unwrap();
        std::fs::write(comfy.join("theirs.safetensors"), safetensors("{}", b"c")).unwrap();
        library.add_folder(comfy.clone());
        library.add_folder(comfy.clone());
        assert_eq!(library.folders().len(), 2);
        let names: Vec<_> = library
            .list()
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(names, ["mine", "theirs"]);
        assert_eq!(
            library.path_of("mine").unwrap(),
            library.folder().join("mine.safetensors")
        );
        assert_eq!(
            library.path_of("theirs").unwrap(),
            comfy.join("theirs.safetensors")
        );
    }

    #[test]
    fn lists_valid_files_and_hashes_their_data_only() {
        let dir = tempfile::tempdir().unwrap();
        let library = LoraLibrary::open(&dir.path().join("loras")).unwrap();
        let folder = library.folder().to_path_buf();
        std::fs::write(
            folder.join("paper cut.safetensors"),
            safetensors("{}", b"abc"),
        )
        .unwrap();
        std::fs::write(folder.join("notes.txt"), "not a LoRA").unwrap();
        std::fs::write(folder.join(".hidden.safetensors"), safetensors("{}", b"x")).unwrap();
        let listed = library.list().unwrap();
        assert_eq!(listed.len(), 1);
        // sha256("abc"): the header is not hashed.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(
            listed[0],
            LoraInfo {
                name: "paper cut".into(),
                bytes: 13,
                sha256: abc.into()
            }
        );
        // Another header, the same tensor data: the same hash.
        std::fs::write(
            folder.join("paper cut.safetensors"),
            safetensors("{ }  ", b"abc"),
        )
        .unwrap();
        assert_eq!(library.info("paper cut").unwrap().sha256, abc);
        assert!(library.path_of("../loras/paper cut").is_none());
        let with_names = folder.join("named.safetensors");
        std::fs::write(
            &with_names,
            safetensors(r#"{"__metadata__": {}, "a.lora_A.weight": {}}"#, b""),
        )
        .unwrap();
        assert_eq!(
            tensor_names(&with_names).unwrap(),
            BTreeSet::from(["a.lora_A.weight".to_string()])
        );
        assert!(tensor_names(&folder.join("notes.txt")).is_err());
        assert!(library.info("missing").is_err());
    }
}

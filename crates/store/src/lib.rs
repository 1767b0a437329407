//! Image files on disk.
//!
//! Layout under the data directory: `images/{id}.png`, `thumbnails/{id}.png`,
//! `inputs/` (image-to-image pictures), `loras/` (the user's LoRA files),
//! `upscalers/` (super-resolution networks) and
//! `tmp/` for writes in flight. Paths are built only from a parsed
//! [`ImageId`], so no request can name a file outside these folders. Every
//! file is written to `tmp/`, fsynced and renamed into place, so a reader
//! (or a crash) never sees half an image.

#![forbid(unsafe_code)]

mod digest_cache;
mod folder_set;
mod inputs;
pub mod loras;
mod png_io;
pub mod upscalers;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use cyberimage_core::ImageId;

pub use inputs::{decode_picture, is_input_digest, sha256_hex, RgbPicture};
pub use png_io::{encode_png, read_png_text, thumbnail_png, THUMBNAIL_MAX_SIDE};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot encode PNG: {0}")]
    Encode(String),
    #[error("cannot decode PNG: {0}")]
    Decode(String),
    /// The blocking task doing the file work panicked or was cancelled.
    #[error("file work did not finish: {0}")]
    Interrupted(String),
}

#[derive(Clone, Debug)]
pub struct ImageStore {
    /// `loras/`: LoRA files the user drops in, read by name.
    loras: std::sync::Arc<loras::LoraLibrary>,
    /// `upscalers/`: super-resolution networks, and the built-in ones.
    upscalers: std::sync::Arc<upscalers::UpscalerLibrary>,
    images: PathBuf,
    thumbnails: PathBuf,
    inputs: PathBuf,
    tmp: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Full,
    Thumbnail,
}

impl ImageStore {
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let store = Self {
            loras: std::sync::Arc::new(loras::LoraLibrary::open(&root.join("loras"))?),
            upscalers: std::sync::Arc::new(upscalers::UpscalerLibrary::open(
                &root.join("upscalers"),
            )?),
            images: root.join("images"),
            thumbnails: root.join("thumbnails"),
            inputs: root.join("inputs"),
            tmp: root.join("tmp"),
        };
        for dir in [&store.images, &store.thumbnails, &store.inputs, &store.tmp] {
            fs::create_dir_all(dir).map_err(|source| StoreError::Write {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(store)
    }

    pub fn loras(&self) -> &loras::LoraLibrary {
        &self.loras
    }

    pub fn upscalers(&self) -> &upscalers::UpscalerLibrary {
        &self.upscalers
    }

    pub fn path(&self, id: ImageId, variant: Variant) -> PathBuf {
        let dir = match variant {
            Variant::Full => &self.images,
            Variant::Thumbnail => &self.thumbnails,
        };
        dir.join(format!("{id}.png"))
    }

    /// Writes the image and its thumbnail; both are durable when this returns.
    pub fn save(&self, id: ImageId, png: &[u8], thumbnail: &[u8]) -> Result<(), StoreError> {
        self.write_atomic(&self.path(id, Variant::Thumbnail), thumbnail)?;
        self.write_atomic(&self.path(id, Variant::Full), png)
    }

    /// `Ok(None)` when the file does not exist.
    pub fn read(&self, id: ImageId, variant: Variant) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(id, variant);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Read { path, source }),
        }
    }

    /// Keeps an input picture (normalised to PNG) under its digest, which
    /// it returns; an input already kept is not written again.
    pub fn save_input(&self, picture: &RgbPicture) -> Result<String, StoreError> {
        let png = picture.to_png()?;
        let digest = sha256_hex(&png);
        let path = self.inputs.join(format!("{digest}.png"));
        if !path.exists() {
            self.write_atomic(&path, &png)?;
        }
        Ok(digest)
    }

    /// The input picture with this digest; `Ok(None)` when there is none
    /// (or the digest is malformed: it never becomes a path).
    pub fn read_input(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if !is_input_digest(digest) {
            return Ok(None);
        }
        let path = self.inputs.join(format!("{digest}.png"));
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Read { path, source }),
        }
    }

    /// Every kept input's digest, with how long ago it was written.
    pub fn list_inputs(&self) -> Result<Vec<(String, std::time::Duration)>, StoreError> {
        let entries = fs::read_dir(&self.inputs).map_err(|source| StoreError::Read {
            path: self.inputs.clone(),
            source,
        })?;
        Ok(entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name();
                let digest = name.to_str()?.strip_suffix(".png")?.to_owned();
                let age = e
                    .metadata()
                    .ok()?
                    .modified()
                    .ok()?
                    .elapsed()
                    .unwrap_or_default();
                is_input_digest(&digest).then_some((digest, age))
            })
            .collect())
    }

    /// Removes a kept input; a missing one is not an error.
    pub fn delete_input(&self, digest: &str) -> Result<(), StoreError> {
        if !is_input_digest(digest) {
            return Ok(());
        }
        let path = self.inputs.join(format!("{digest}.png"));
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Write { path, source }),
        }
    }

    /// How long ago the file was last written; `None` if it does not exist.
    pub fn age(&self, id: ImageId, variant: Variant) -> Option<std::time::Duration> {
        let modified = fs::metadata(self.path(id, variant)).ok()?.modified().ok()?;
        Some(modified.elapsed().unwrap_or_default())
    }

    /// Removes both files; missing files are not an error.
    pub fn delete(&self, id: ImageId) -> Result<(), StoreError> {
        for variant in [Variant::Full, Variant::Thumbnail] {
            let path = self.path(id, variant);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::Write { path, source }),
            }
        }
        Ok(())
    }

    /// Ids of every full-size image on disk (files that do not parse as ids
    /// are ignored), for reconciling files against database rows.
    pub fn list_ids(&self) -> Result<Vec<ImageId>, StoreError> {
        let entries = fs::read_dir(&self.images).map_err(|source| StoreError::Read {
            path: self.images.clone(),
            source,
        })?;
        Ok(entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name();
                let stem = name.to_str()?.strip_suffix(".png")?;
                ImageId::parse(stem).ok()
            })
            .collect())
    }

    /// Removes leftovers of writes a crash interrupted.
    pub fn clean_tmp(&self) -> Result<usize, StoreError> {
        let mut removed = 0;
        if let Ok(entries) = fs::read_dir(&self.tmp) {
            for entry in entries.filter_map(Result::ok) {
                if fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let file_name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("image");
        let tmp = self
            .tmp
            .join(format!("{file_name}.{}.part", std::process::id()));
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Write { path, source }
        };
        let result = (|| -> Result<(), StoreError> {
            let mut f = File::create(&tmp).map_err(write_err(&tmp))?;
            f.write_all(bytes).map_err(write_err(&tmp))?;
            f.sync_all().map_err(write_err(&tmp))?;
            fs::rename(&tmp, dest).map_err(write_err(dest))?;
            // The rename is durable only once the directory entry is.
            if let Some(dir) = dest.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(write_err(dir))?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_read_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let id = ImageId::new();
        assert_eq!(store.read(id, Variant::Full).unwrap(), None);
        store.save(id, b"full", b"thumb").unwrap();
        assert_eq!(store.read(id, Variant::Full).unwrap().unwrap(), b"full");
        assert_eq!(
            store.read(id, Variant::Thumbnail).unwrap().unwrap(),
            b"thumb"
        );
        assert_eq!(store.list_ids().unwrap(), vec![id]);
        assert!(
            fs::read_dir(dir.path().join("tmp"))
                .unwrap()
                .next()
                .is_none(),
            "no temp files remain"
        );
        store.delete(id).unwrap();
        store.delete(id).unwrap();
        assert_eq!(store.read(id, Variant::Full).unwrap(), None);
        assert!(store.list_ids().unwrap().is_empty());
    }

    #[test]
    fn paths_stay_inside_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let id = ImageId::new();
        let p = store.path(id, Variant::Full);
        assert_eq!(p.parent().unwrap(), dir.path().join("images"));
        assert_eq!(
            p.file_name().unwrap().to_str().unwrap(),
            format!("{id}.png")
        );
    }

    #[test]
    fn unwritable_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        fs::remove_dir_all(dir.path().join("tmp")).unwrap();
        let err = store.save(ImageId::new(), b"x", b"y").unwrap_err();
        assert!(matches!(err, StoreError::Write { .. }), "{err}");
        assert!(err.to_string().contains("cannot write"));
    }
}

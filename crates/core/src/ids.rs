//! Identifiers for jobs and images.
//!
//! Image ids end up in file names, so they are parsed strictly before any
//! filesystem use: a value that does not match the format can never name a
//! path, whatever characters it holds.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[error("malformed {kind} id")]
pub struct IdError {
    pub kind: &'static str,
}

/// A job id: a hyphenated lowercase UUID v4, as in the seed's examples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(Uuid);

impl JobId {
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    pub fn parse(s: &str) -> Result<Self, IdError> {
        // Only the canonical hyphenated form: one job, one spelling.
        if s.len() != 36 {
            return Err(IdError { kind: "job" });
        }
        Uuid::try_parse(s)
            .ok()
            .filter(|u| u.hyphenated().to_string() == s)
            .map(Self)
            .ok_or(IdError { kind: "job" })
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.hyphenated())
    }
}

impl Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An image id: `img_` followed by 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId([u8; 36]);

impl ImageId {
    const PREFIX: &'static str = "img_";

    pub fn new() -> Self {
        let s = format!("{}{}", Self::PREFIX, Uuid::new_v4().simple());
        Self::parse(&s).expect("generated image id is well-formed")
    }

    pub fn parse(s: &str) -> Result<Self, IdError> {
        let err = IdError { kind: "image" };
        let hex = s.strip_prefix(Self::PREFIX).ok_or(err)?;
        if hex.len() != 32 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(err);
        }
        let mut bytes = [0u8; 36];
        bytes.copy_from_slice(s.as_bytes());
        Ok(Self(bytes))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII ever gets in, through `parse`.
        std::str::from_utf8(&self.0).expect("image id is ASCII")
    }
}

impl Default for ImageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageId({})", self.as_str())
    }
}

impl Serialize for ImageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ImageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_ids_round_trip_and_reject_paths() {
        let id = ImageId::new();
        assert_eq!(ImageId::parse(id.as_str()).unwrap(), id);
        for bad in [
            "",
            "img_",
            "../etc/passwd",
            "img_../../../../etc/passwd",
            "img_0123456789abcdef0123456789ABCDEF",
            "img_0123456789abcdef0123456789abcdef0",
            "img_0123456789abcdef0123456789abcde/",
            "img_0123456789abcdef0123456789abcd%2e",
            "IMG_0123456789abcdef0123456789abcdef",
        ] {
            assert!(ImageId::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn job_ids_accept_only_canonical_uuids() {
        let id = JobId::new();
        assert_eq!(JobId::parse(&id.to_string()).unwrap(), id);
        assert!(JobId::parse("0C907066-985E-467B-8D11-07419060EF91").is_err());
        assert!(JobId::parse("0c907066985e467b8d1107419060ef91").is_err());
        assert!(JobId::parse("0c907066-985e-467b-8d11-07419060ef91").is_ok());
    }
}

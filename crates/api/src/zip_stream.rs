//! A ZIP archive written as it streams: each member is stored (PNGs are
//! compressed already), so its CRC and size are known before its header
//! and no data descriptors or seeking are needed. The caller bounds the
//! count and total size below ZIP's 65,535 entries and 4 GiB (no ZIP64).

/// Entries one archive holds without ZIP64 (past 4 GiB, `member` errs).
pub const MAX_ENTRIES: usize = 65_535;

struct Entry {
    name: Vec<u8>,
    crc: u32,
    size: u32,
    offset: u32,
    time: u16,
    date: u16,
}

/// Collects the central directory while members are emitted.
#[derive(Default)]
pub struct ZipWriter {
    entries: Vec<Entry>,
    offset: u64,
}

/// MS-DOS time and date of a UTC time (ZIP's only mandatory timestamp).
fn dos_time(t: &chrono::DateTime<chrono::Utc>) -> (u16, u16) {
    use chrono::{Datelike, Timelike};
    let year = t.year().clamp(1980, 2107) as u16;
    let time = ((t.hour() as u16) << 11) | ((t.minute() as u16) << 5) | (t.second() as u16 / 2);
    let date = ((year - 1980) << 9) | ((t.month() as u16) << 5) | t.day() as u16;
    (time, date)
}

impl ZipWriter {
    /// The bytes of one member: its local header, then `data`.
    pub fn member(
        &mut self,
        name: &str,
        data: &[u8],
        modified: &chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<u8>, &'static str> {
        if self.entries.len() >= MAX_ENTRIES {
            return Err("too many files for one ZIP");
        }
        let size = u32::try_from(data.len()).map_err(|_| "a file over 4 GiB")?;
        let offset = u32::try_from(self.offset).map_err(|_| "the archive passed 4 GiB")?;
        let (time, date) = dos_time(modified);
        let entry = Entry {
            name: name.as_bytes().to_vec(),
            crc: crc32fast::hash(data),
            size,
            offset,
            time,
            date,
        };
        let mut out = Vec::with_capacity(30 + entry.name.len() + data.len());
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&20u16.to_le_bytes()); // version needed: 2.0
        out.extend_from_slice(&0x0800u16.to_le_bytes()); // names are UTF-8
        out.extend_from_slice(&0u16.to_le_bytes()); // stored
        out.extend_from_slice(&entry.time.to_le_bytes());
        out.extend_from_slice(&entry.date.to_le_bytes());
        out.extend_from_slice(&entry.crc.to_le_bytes());
        out.extend_from_slice(&entry.size.to_le_bytes());
        out.extend_from_slice(&entry.size.to_le_bytes());
        out.extend_from_slice(&(entry.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // no extra field
        out.extend_from_slice(&entry.name);
        out.extend_from_slice(data);
        self.offset += out.len() as u64;
        self.entries.push(entry);
        Ok(out)
    }

    /// The central directory and its end record.
    pub fn finish(self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &self.entries {
            out.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            out.extend_from_slice(&20u16.to_le_bytes()); // made by: 2.0
            out.extend_from_slice(&20u16.to_le_bytes()); // needed: 2.0
            out.extend_from_slice(&0x0800u16.to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(&e.time.to_le_bytes());
            out.extend_from_slice(&e.date.to_le_bytes());
            out.extend_from_slice(&e.crc.to_le_bytes());
            out.extend_from_slice(&e.size.to_le_bytes());
            out.extend_from_slice(&e.size.to_le_bytes());
            out.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            out.extend_from_slice(&[0; 12]); // extra, comment, disk, attributes (2+2+2+2+4)
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&e.name);
        }
        let count = self.entries.len() as u16;
        let directory_size = out.len() as u32;
        out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        out.extend_from_slice(&[0; 4]); // this disk, the directory's disk
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&directory_size.to_le_bytes());
        out.extend_from_slice(&(self.offset as u32).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // no comment
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dos_times_pack_as_zip_wants() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-12-03T09:30:44Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let (time, date) = dos_time(&t);
        assert_eq!(time >> 11, 9);
        assert_eq!((time >> 5) & 63, 30);
        assert_eq!(time & 31, 22);
        assert_eq!(date >> 9, 46);
        assert_eq!((date >> 5) & 15, 12);
        assert_eq!(date & 31, 3);
    }
}

//! The safetensors format, read one tensor at a time with plain reads: an
//! 8-byte little-endian header length, a JSON header naming each tensor's
//! dtype, shape and byte range, then the data. Float tensors are converted
//! to the compute dtype as each is read, FP8 ones included (`F8_E4M3` is
//! PyTorch's `float8_e4m3fn`, `F8_E5M2` its `float8_e5m2`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

pub(crate) enum ReadError {
    Io(std::io::Error),
    Format(String),
    Candle(candle_core::Error),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

impl From<candle_core::Error> for ReadError {
    fn from(e: candle_core::Error) -> Self {
        ReadError::Candle(e)
    }
}

/// One tensor as the header describes it.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct TensorEntry {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data_offsets: (u64, u64),
}

impl TensorEntry {
    pub fn elements(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64
    }
}

/// The largest header we accept: real ones are a few MB (SDXL: 2,500
/// tensors in about 300 KB).
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// The tensor entries of a safetensors file and where its data begins.
fn read_header_of(file: &mut File) -> Result<(HashMap<String, TensorEntry>, u64), ReadError> {
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER_BYTES {
        return Err(ReadError::Format(format!("header of {header_len} bytes")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)?;
    let mut raw: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| ReadError::Format(format!("header: {e}")))?;
    raw.remove("__metadata__");
    let mut entries = HashMap::with_capacity(raw.len());
    for (name, value) in raw {
        let entry: TensorEntry = serde_json::from_value(value)
            .map_err(|e| ReadError::Format(format!("tensor {name}: {e}")))?;
        entries.insert(name, entry);
    }
    Ok((entries, 8 + header_len))
}

/// The tensor names, dtypes and shapes of `path`, from its header only.
pub fn read_header(path: &Path) -> std::io::Result<HashMap<String, TensorEntry>> {
    let mut file = File::open(path)?;
    read_header_of(&mut file)
        .map(|(entries, _)| entries)
        .map_err(|e| match e {
            ReadError::Io(e) => e,
            ReadError::Format(what) => std::io::Error::new(std::io::ErrorKind::InvalidData, what),
            ReadError::Candle(e) => std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
}

/// Stored dtypes: candle's, or an FP8 format decoded here.
enum Stored {
    Candle(DType),
    Fp8(fn(u8) -> f32),
}

fn stored_dtype(name: &str, dtype: &str) -> Result<(Stored, usize), ReadError> {
    Ok(match dtype {
        "F32" => (Stored::Candle(DType::F32), 4),
        "F16" => (Stored::Candle(DType::F16), 2),
        "BF16" => (Stored::Candle(DType::BF16), 2),
        "F64" => (Stored::Candle(DType::F64), 8),
        "I64" => (Stored::Candle(DType::I64), 8),
        "U32" => (Stored::Candle(DType::U32), 4),
        "U8" => (Stored::Candle(DType::U8), 1),
        "F8_E4M3" => (Stored::Fp8(e4m3fn_to_f32), 1),
        "F8_E5M2" => (Stored::Fp8(e5m2_to_f32), 1),
        other => return Err(ReadError::Format(format!("tensor {name}: dtype {other}"))),
    })
}

/// `float8_e4m3fn`: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no
/// infinities, and only S.1111.111 is NaN.
pub fn e4m3fn_to_f32(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((code >> 3) & 0x0f);
    let mantissa = f32::from(code & 0x07);
    if exponent == 0x0f && code & 0x07 == 0x07 {
        return f32::NAN;
    }
    sign * if exponent == 0 {
        mantissa / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + mantissa / 8.0) * 2f32.powi(exponent - 7)
    }
}

/// `float8_e5m2`: 1 sign, 5 exponent (bias 15), 2 mantissa bits, with
/// IEEE infinities and NaNs (the top byte of an f16).
pub fn e5m2_to_f32(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((code >> 2) & 0x1f);
    let mantissa = f32::from(code & 0x03);
    sign * match exponent {
        0 => mantissa / 4.0 * 2f32.powi(-14),
        0x1f if mantissa == 0.0 => f32::INFINITY,
        0x1f => f32::NAN,
        _ => (1.0 + mantissa / 4.0) * 2f32.powi(exponent - 15),
    }
}

/// Reads the tensors of `path` that `select` names (under the name it
/// returns), converting floats to `float_dtype`; the others are skipped
/// without being read.
pub(crate) fn read_selected(
    path: &Path,
    device: &Device,
    float_dtype: DType,
    select: &dyn Fn(&str) -> Option<String>,
    out: &mut HashMap<String, Tensor>,
) -> Result<(), ReadError> {
    let mut file = File::open(path)?;
    let (entries, data_start) = read_header_of(&mut file)?;
    // In file order: one forward pass over the data.
    let mut entries: Vec<(String, TensorEntry)> = entries.into_iter().collect();
    entries.sort_by_key(|(_, e)| e.data_offsets.0);
    let mut buf = Vec::new();
    for (name, entry) in entries {
        let Some(new_name) = select(&name) else {
            continue;
        };
        let (stored, size) = stored_dtype(&name, &entry.dtype)?;
        let (start, end) = entry.data_offsets;
        let expected = entry.shape.iter().product::<usize>() * size;
        if end < start || (end - start) as usize != expected {
            return Err(ReadError::Format(format!(
                "tensor {name}: bad data offsets"
            )));
        }
        file.seek(SeekFrom::Start(data_start + start))?;
        let shape = entry.shape.as_slice();
        let tensor = match stored {
            Stored::Candle(DType::F32) if cfg!(target_endian = "little") => {
                // Straight into the tensor's own buffer: no staging copy,
                // and a large zeroed allocation is fresh pages the read
                // fills once. The file stores little-endian, like this CPU.
                let mut values = vec![0f32; expected / 4];
                file.read_exact(cyberimage_kernels::buffers::f32_bytes_mut(&mut values))?;
                Tensor::from_vec(values, shape, device)?
            }
            Stored::Candle(dtype) => {
                buf.resize(expected, 0);
                file.read_exact(&mut buf)?;
                Tensor::from_raw_buffer(&buf, dtype, shape, device)?
            }
            Stored::Fp8(decode) => {
                buf.resize(expected, 0);
                file.read_exact(&mut buf)?;
                let table: Vec<f32> = (0..=255u8).map(decode).collect();
                let values: Vec<f32> = buf.iter().map(|&b| table[usize::from(b)]).collect();
                Tensor::from_vec(values, shape, device)?
            }
        };
        let tensor = if tensor.dtype().is_float() && tensor.dtype() != float_dtype {
            tensor.to_dtype(float_dtype)?
        } else {
            tensor
        };
        out.insert(new_name, tensor);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_decoding_matches_the_formats_landmarks() {
        assert_eq!(e4m3fn_to_f32(0x00), 0.0);
        assert_eq!(e4m3fn_to_f32(0x38), 1.0);
        assert_eq!(e4m3fn_to_f32(0x7e), 448.0, "largest e4m3fn");
        assert_eq!(e4m3fn_to_f32(0x01), 2f32.powi(-9), "smallest subnormal");
        assert_eq!(e4m3fn_to_f32(0xb8), -1.0);
        assert!(e4m3fn_to_f32(0x7f).is_nan() && e4m3fn_to_f32(0xff).is_nan());
        assert_eq!(e5m2_to_f32(0x3c), 1.0);
        assert_eq!(e5m2_to_f32(0x7b), 57344.0, "largest e5m2");
        assert_eq!(e5m2_to_f32(0x7c), f32::INFINITY);
        assert!(e5m2_to_f32(0x7d).is_nan());
        assert_eq!(e5m2_to_f32(0x01), 2f32.powi(-16));
    }
}

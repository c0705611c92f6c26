//! Compression of archived files: zstd (default), gzip, or none. The codec of an
//! object is told by its extension, so any mix in one archive restores.

use std::io::{Read, Write};

/// A compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Stored as is.
    None,
    /// gzip (flate2 on zlib-rs), readable by older barman-cloud.
    Gzip,
    /// zstd.
    Zstd,
}

/// On the benchmark's pgbench WAL, level 1 compresses as well as level 3 (4.17:1) at
/// 1.6 times the speed; level 6 gains 6% for 5 times the CPU (docs/wal-archiving.md).
const ZSTD_LEVEL: i32 = 1;
/// gzip level 1, the fastest; WAL is repetitive enough that higher levels gain little.
const GZIP_LEVEL: u32 = 1;

impl Codec {
    /// Parses `PGWARDEN_ARCHIVE_COMPRESSION`.
    pub fn parse(s: &str) -> Option<Codec> {
        match s {
            "none" => Some(Codec::None),
            "gzip" => Some(Codec::Gzip),
            "zstd" => Some(Codec::Zstd),
            _ => None,
        }
    }

    /// The object name extension.
    pub fn extension(self) -> &'static str {
        match self {
            Codec::None => "",
            Codec::Gzip => ".gz",
            Codec::Zstd => ".zst",
        }
    }

    /// The codec of an object, from the part of its key after the WAL file name.
    pub fn from_extension(ext: &str) -> Option<Codec> {
        [Codec::None, Codec::Gzip, Codec::Zstd]
            .into_iter()
            .find(|c| c.extension() == ext)
    }

    /// Compresses `data`.
    pub fn compress(self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Codec::None => Ok(data.to_vec()),
            Codec::Gzip => {
                let mut enc = flate2::write::GzEncoder::new(
                    Vec::with_capacity(data.len() / 4),
                    flate2::Compression::new(GZIP_LEVEL),
                );
                enc.write_all(data)?;
                enc.finish()
            }
            Codec::Zstd => zstd::bulk::compress(data, ZSTD_LEVEL),
        }
    }

    /// Decompresses `data`, refusing to produce more than `limit` bytes (a corrupt or
    /// hostile object cannot exhaust memory).
    pub fn decompress(self, data: &[u8], limit: usize) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let n = match self {
            Codec::None => return Ok(data.to_vec()),
            Codec::Gzip => flate2::read::GzDecoder::new(data)
                .take(limit as u64 + 1)
                .read_to_end(&mut out)?,
            Codec::Zstd => zstd::stream::read::Decoder::new(data)?
                .take(limit as u64 + 1)
                .read_to_end(&mut out)?,
        };
        if n > limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "decompresses to more than a WAL file can hold",
            ));
        }
        Ok(out)
    }
}

/// Splits an archived file name into the WAL name and its codec
/// (`000000010000000000000001.zst` → that segment, zstd).
pub fn split_codec(file: &str) -> Option<(super::names::WalName, Codec)> {
    [Codec::Zstd, Codec::Gzip, Codec::None]
        .into_iter()
        .find_map(|c| {
            Some((
                super::names::WalName::parse(file.strip_suffix(c.extension())?)?,
                c,
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_bounds_output() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for c in [Codec::None, Codec::Gzip, Codec::Zstd] {
            let z = c.compress(&data).unwrap();
            assert_eq!(c.decompress(&z, data.len()).unwrap(), data, "{c:?}");
            if c != Codec::None {
                assert!(z.len() < data.len() / 2);
                assert!(
                    c.decompress(&z, 1000).is_err(),
                    "{c:?} must honour the limit"
                );
                assert!(
                    c.decompress(&z[..z.len() / 2], data.len()).is_err(),
                    "{c:?} truncated"
                );
            }
            assert_eq!(Codec::from_extension(c.extension()), Some(c));
        }
        let (n, c) = split_codec("000000010000000000000001.zst").unwrap();
        assert_eq!(
            (n.name.as_str(), c),
            ("000000010000000000000001", Codec::Zstd)
        );
        assert_eq!(split_codec("00000002.history").unwrap().1, Codec::None);
        assert!(split_codec("pgwarden-system-identifier").is_none());
    }
}

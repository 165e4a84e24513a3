//! Encoding of everything the store writes to sled.
//!
//! Every value starts with a one-byte format version followed by a postcard body. The
//! openraft envelope (log id, payload kind, membership) is stable across openraft 0.9; the
//! application payload inside it is the application's own type, which for Corral is a
//! protobuf message, so newer masters can read older logs (DESIGN.md, "rolling upgrades").
//! Keys of the log tree are big-endian indexes so that sled's byte order is log order.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::StoreError;

/// The format version written by this build. Version 2: standard Raft leader ids (openraft's
/// `single-term-leader`, at most one leader per term), so log ids carry only the term.
/// Version 1 stores (two leaders could share a term) are refused, not misread.
pub const FORMAT_VERSION: u8 = 2;

/// How many format versions beyond ours a record may carry and still be taken for the
/// work of a newer build rather than damage.
const NEWER_FORMATS: u8 = 16;

pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![FORMAT_VERSION];
    postcard::to_io(value, &mut out).map_err(|source| StoreError::Codec { what, source })?;
    Ok(out)
}

pub(crate) fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, body)) => {
            postcard::from_bytes(body).map_err(|source| StoreError::Codec { what, source })
        }
        // A version a little ahead was written by a newer build; anything else is no
        // version any build wrote: a damaged record, not an upgrade to wait for.
        Some((&version, _)) if version > FORMAT_VERSION && version <= FORMAT_VERSION + NEWER_FORMATS => {
            Err(StoreError::UnsupportedFormat {
                what,
                version,
                supported: FORMAT_VERSION,
            })
        }
        Some((&version, _)) if version < FORMAT_VERSION && version > 0 => Err(StoreError::UnsupportedFormat {
            what,
            version,
            supported: FORMAT_VERSION,
        }),
        Some((&version, _)) => Err(StoreError::Corrupt(format!(
            "{what}: format byte {version} is no format any version writes: the record is damaged"
        ))),
        None => Err(StoreError::Corrupt(format!("{what}: empty record"))),
    }
}

/// The sled key of log index `index`.
pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The log index stored under sled key `key`.
pub(crate) fn key_index(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("log key of {} bytes, expected 8", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let bytes = encode("thing", &(7u64, "x".to_string())).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        let back: (u64, String) = decode("thing", &bytes).unwrap();
        assert_eq!(back, (7, "x".to_string()));

        let mut newer = bytes.clone();
        newer[0] = FORMAT_VERSION + 1;
        let err = decode::<(u64, String)>("thing", &newer).unwrap_err();
        assert!(err.is_fatal_environment(), "{err}");
        assert!(decode::<u64>("thing", &[]).is_err());
    }

    #[test]
    fn keys_sort_in_log_order() {
        assert!(index_key(255) < index_key(256));
        assert_eq!(key_index(&index_key(u64::MAX)).unwrap(), u64::MAX);
        assert!(key_index(&[1, 2, 3]).is_err());
    }
}

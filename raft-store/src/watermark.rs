//! The durable watermark: the highest log index the store has made durable, kept in a small
//! file beside sled, so that a log that lost durable entries is found at open instead of
//! being served as if nothing happened.
//!
//! Why a file of our own: sled 0.34 treats the first damaged record of its log (a flipped
//! byte, a truncated file) as the torn tail of a crash and silently drops it and everything
//! after it, acknowledged entries and the vote included. A store that comes back with a
//! shorter log is indistinguishable from one that never had the entries, unless something
//! outside sled remembers how far the log reached.
//!
//! Cost: one small positioned write per flush, after the flush, with no fsync of its own.
//! The watermark only ever lags what is durable (it is written after sled's fsync returned),
//! so it can miss a loss but never report one that did not happen: after a power cut it may
//! be older than the log, never newer. A Raft truncation (which legitimately shortens the
//! log) lowers it durably *before* any entry is removed.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use sha2::Digest as _;

use crate::StoreError;

/// The watermark file in a data dir.
pub(crate) const FILE: &str = "durable.mark";

/// Bytes of the file: the index + 1 (0: nothing durable yet), then a check of it.
const LEN: usize = 16;

/// The open watermark file and the value it holds.
pub(crate) struct Watermark {
    file: File,
    /// Highest index written (index + 1; 0 for none).
    written: Mutex<u64>,
}

fn encode(value: u64) -> [u8; LEN] {
    let mut out = [0u8; LEN];
    out[..8].copy_from_slice(&value.to_le_bytes());
    out[8..].copy_from_slice(&sha2::Sha256::digest(value.to_le_bytes())[..8]);
    out
}

impl Watermark {
    /// Open (or create) the watermark in `dir`; returns it with the highest durable log
    /// index it records (None: none recorded).
    pub(crate) fn open(dir: &Path) -> Result<(Watermark, Option<u64>), StoreError> {
        let path = dir.join(FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mut bytes = [0u8; LEN];
        let len = file.metadata()?.len();
        let value = match len {
            0 => 0,
            n if n as usize == LEN => {
                file.read_exact_at(&mut bytes, 0)?;
                let value = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
                if encode(value) != bytes {
                    return Err(StoreError::Corrupt(format!(
                        "{}: the durable watermark is damaged",
                        path.display()
                    )));
                }
                value
            }
            n => {
                return Err(StoreError::Corrupt(format!(
                    "{}: {n} bytes, expected {LEN}: the durable watermark is damaged",
                    path.display()
                )))
            }
        };
        let mark = Watermark {
            file,
            written: Mutex::new(value),
        };
        Ok((mark, value.checked_sub(1)))
    }

    /// Record that the log is durable up to `index` (called after the flush that made it
    /// so). Never lowers the mark; no fsync (see the module doc).
    pub(crate) fn raise(&self, index: u64) -> std::io::Result<()> {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if index < *written {
            return Ok(());
        }
        self.file.write_all_at(&encode(index + 1), 0)?;
        *written = index + 1;
        Ok(())
    }

    /// The log is about to be cut back to end before `first_removed`: lower the mark
    /// durably first, so that a crash in the middle of the truncation is not taken for a
    /// lost log.
    pub(crate) fn lower(&self, first_removed: u64) -> std::io::Result<()> {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if first_removed >= *written {
            return Ok(());
        }
        self.file.write_all_at(&encode(first_removed), 0)?;
        self.file.sync_data()?;
        *written = first_removed;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_lowers_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (mark, at) = Watermark::open(dir.path()).unwrap();
        assert_eq!(at, None);
        mark.raise(10).unwrap();
        mark.raise(5).unwrap(); // never lowered by a raise
        drop(mark);
        let (mark, at) = Watermark::open(dir.path()).unwrap();
        assert_eq!(at, Some(10));
        mark.lower(7).unwrap();
        drop(mark);
        assert_eq!(Watermark::open(dir.path()).unwrap().1, Some(6));
        // A flipped byte is damage, not a smaller mark.
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(Watermark::open(dir.path()), Err(StoreError::Corrupt(_))));
    }
}

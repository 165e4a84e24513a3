//! The sandboxes, served read-only over the agent's HTTP endpoint in the shape of Mesos'
//! files API:
//!
//! - `GET /files/read?path=P&offset=N&length=L`: `{"data": "...", "offset": N,
//!   "next_offset": M}`, at most [`MAX_READ_BYTES`] of the file from byte `N` (`offset=-1`
//!   answers no data and the file's size as `offset`, to start at the end). `data` is text;
//!   a multi-byte character cut by the end of the window is left for the next read, and
//!   `next_offset` is where that read starts (Mesos clients add the length of `data`, which
//!   is the same for text).
//! - `GET /files/browse?path=P`: the entries of a directory, each `{"path", "size", "mode",
//!   "mtime", "nlink"}`.
//!
//! `path` is relative to the work dir (`frameworks/<fid>/tasks/<tid>/stdout`) or absolute
//! inside it, and must resolve (symbolic links followed) inside `<work-dir>/frameworks`:
//! the agent's own records under `meta/` are never served. Errors: 400 naming the
//! parameter, 403 outside the sandboxes, 404 for a path that does not exist.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::Tasks;

/// Most bytes one read returns.
pub const MAX_READ_BYTES: u64 = 1 << 20;
/// Bytes a read returns when it names no length.
pub const DEFAULT_READ_BYTES: u64 = 64 * 1024;
/// Longest `path` accepted.
pub const MAX_PATH_LEN: usize = 4096;
/// Most entries one browse lists.
pub const MAX_BROWSE_ENTRIES: usize = 10_000;

/// A refused request: the status and a message naming the parameter.
type Refusal = (StatusCode, Json<Value>);

fn refuse(code: StatusCode, message: String) -> Refusal {
    (code, Json(json!({ "error": message })))
}

/// The query of `/files/read`.
#[derive(Debug, Deserialize)]
pub struct ReadQuery {
    path: Option<String>,
    offset: Option<i64>,
    length: Option<u64>,
}

/// The query of `/files/browse`.
#[derive(Debug, Deserialize)]
pub struct BrowseQuery {
    path: Option<String>,
}

/// `path` resolved inside the sandboxes of `work_dir`, or why not.
pub fn resolve(work_dir: &Path, path: Option<&str>) -> Result<PathBuf, Refusal> {
    let path = path
        .filter(|p| !p.is_empty())
        .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "path: missing".into()))?;
    if path.len() > MAX_PATH_LEN || path.contains('\0') {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("path: longer than {MAX_PATH_LEN} bytes or holds a NUL byte"),
        ));
    }
    let asked = Path::new(path);
    let full = if asked.is_absolute() {
        asked.to_path_buf()
    } else {
        work_dir.join(asked)
    };
    let sandboxes = work_dir.join("frameworks").canonicalize().map_err(|_| {
        refuse(
            StatusCode::NOT_FOUND,
            format!("path: {} does not exist", corral_proto::quote(path)),
        )
    })?;
    let real = full.canonicalize().map_err(|_| {
        refuse(
            StatusCode::NOT_FOUND,
            format!("path: {} does not exist", corral_proto::quote(path)),
        )
    })?;
    if !real.starts_with(&sandboxes) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("path: {} is outside the task sandboxes", corral_proto::quote(path)),
        ));
    }
    Ok(real)
}

/// How much of `bytes` to hand out as text: all of it, less a multi-byte character cut by
/// the end of the window (bytes that are not UTF-8 at all go out replaced).
fn text_prefix(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => e.valid_up_to(),
        Err(_) => bytes.len(),
    }
}

/// `GET /files/read`.
pub async fn read(State(tasks): State<Tasks>, Query(q): Query<ReadQuery>) -> Result<Json<Value>, Refusal> {
    let path = resolve(tasks.work_dir(), q.path.as_deref())?;
    let length = q.length.unwrap_or(DEFAULT_READ_BYTES);
    if length > MAX_READ_BYTES {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("length: {length} is over the limit of {MAX_READ_BYTES} bytes"),
        ));
    }
    let offset = q.offset.unwrap_or(0);
    if offset < -1 {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("offset: {offset} is neither a byte offset nor -1 (the end)"),
        ));
    }
    let blocking = tokio::task::spawn_blocking(move || -> std::io::Result<Option<(u64, Vec<u8>)>> {
        let mut file = std::fs::File::open(&path)?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Ok(None);
        }
        let size = meta.len();
        if offset == -1 {
            return Ok(Some((size, Vec::new())));
        }
        let start = (offset as u64).min(size);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        file.take(length).read_to_end(&mut buf)?;
        Ok(Some((start, buf)))
    })
    .await
    .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("reading: {e}")))?;
    match blocking {
        Ok(Some((start, buf))) => {
            let keep = text_prefix(&buf);
            let data = String::from_utf8_lossy(&buf[..keep]);
            Ok(Json(json!({
                "data": data,
                "offset": start,
                "next_offset": start + keep as u64,
            })))
        }
        Ok(None) => Err(refuse(
            StatusCode::BAD_REQUEST,
            "path: is a directory (browse it)".into(),
        )),
        Err(e) => Err(refuse(StatusCode::NOT_FOUND, format!("path: {e}"))),
    }
}

/// `ls -l`'s mode string of `mode` (`drwxr-xr-x`).
fn mode_string(is_dir: bool, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(if is_dir { 'd' } else { '-' });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// `GET /files/browse`.
pub async fn browse(State(tasks): State<Tasks>, Query(q): Query<BrowseQuery>) -> Result<Json<Value>, Refusal> {
    let dir = resolve(tasks.work_dir(), q.path.as_deref())?;
    let listed = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<Value>> {
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&dir)?.take(MAX_BROWSE_ENTRIES) {
            let entry = entry?;
            let Ok(meta) = entry.metadata() else { continue };
            entries.push(json!({
                "path": entry.path().to_string_lossy(),
                "size": meta.len(),
                "mode": mode_string(meta.is_dir(), meta.permissions().mode()),
                "mtime": meta.mtime(),
                "nlink": meta.nlink(),
            }));
        }
        entries.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
        Ok(entries)
    })
    .await
    .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("browsing: {e}")))?;
    listed
        .map(|entries| Json(Value::Array(entries)))
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("path: not a directory ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_inside_the_sandboxes_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path();
        let sandbox = work.join("frameworks/f/tasks/t");
        std::fs::create_dir_all(&sandbox).unwrap();
        std::fs::write(sandbox.join("stdout"), b"hello\n").unwrap();
        std::fs::create_dir_all(work.join("meta")).unwrap();
        std::fs::write(work.join("meta/agent_id"), b"a1").unwrap();
        std::os::unix::fs::symlink(work.join("meta/agent_id"), sandbox.join("escape")).unwrap();

        assert!(resolve(work, Some("frameworks/f/tasks/t/stdout")).is_ok());
        let absolute = sandbox.join("stdout");
        assert!(resolve(work, absolute.to_str()).is_ok());
        let code = |p: &str| resolve(work, Some(p)).unwrap_err().0;
        assert_eq!(code("meta/agent_id"), StatusCode::FORBIDDEN);
        assert_eq!(code("frameworks/../meta/agent_id"), StatusCode::FORBIDDEN);
        assert_eq!(
            code("frameworks/f/tasks/t/escape"),
            StatusCode::FORBIDDEN,
            "a symlink out"
        );
        assert_eq!(code("/etc/passwd"), StatusCode::FORBIDDEN);
        assert_eq!(code("frameworks/f/tasks/t/nothing"), StatusCode::NOT_FOUND);
        assert_eq!(resolve(work, None).unwrap_err().0, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn a_character_cut_by_the_window_waits_for_the_next_read() {
        let text = "héllo".as_bytes();
        // "h", then the first byte of "é": the cut byte is left out.
        assert_eq!(text_prefix(&text[..2]), 1);
        assert_eq!(text_prefix(text), text.len());
        // Not UTF-8 at all: handed out (replaced), never stuck.
        assert_eq!(text_prefix(&[0xff, b'a']), 2);
    }

    #[test]
    fn modes_read_as_ls_writes_them() {
        assert_eq!(mode_string(true, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(false, 0o640), "-rw-r-----");
    }
}

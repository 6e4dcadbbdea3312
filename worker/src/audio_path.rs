//! `file://` audio URIs, confined to a configured root.
//!
//! A recording's `audio_uri` is data: whoever can create recordings could
//! otherwise make the worker read (and transcribe into segments) any file
//! it can open, such as `file:///etc/shadow`. So a path is resolved the way
//! the kernel will open it (`..` and symlinks, by `canonicalize`) and must
//! lie under the root; without a root, `file://` is refused outright.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AudioPathError {
    #[error("file:// audio is disabled on this worker (no audio root is configured: S2T_AUDIO_ROOT / --audio-root)")]
    NoRoot,
    #[error("audio URI {0:?} is not file:///absolute/path")]
    NotAbsolute(String),
    #[error("audio path {0:?} resolves outside the worker's audio root")]
    OutsideRoot(String),
    #[error("cannot open audio path {path:?}: {error}")]
    Unreadable { path: String, error: String },
    #[error("the audio root {path:?} is unusable: {error}")]
    BadRoot { path: String, error: String },
}

fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let hex = |b: u8| (b as char).to_digit(16);
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).expect("checked hex") * 16 + hex(l).expect("checked hex")) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The real path of a `file://` URI, if it lies under `root`.
pub fn resolve_file_uri(uri: &str, root: Option<&Path>) -> Result<PathBuf, AudioPathError> {
    let root = root.ok_or(AudioPathError::NoRoot)?;
    let rest = uri
        .strip_prefix("file://")
        .ok_or_else(|| AudioPathError::NotAbsolute(uri.to_string()))?;
    // Only the local host: file:///p or file://localhost/p.
    let path = rest.strip_prefix("localhost").unwrap_or(rest);
    if !path.starts_with('/') {
        return Err(AudioPathError::NotAbsolute(uri.to_string()));
    }
    let path = percent_decode(path);
    let root = std::fs::canonicalize(root).map_err(|e| AudioPathError::BadRoot {
        path: root.display().to_string(),
        error: e.to_string(),
    })?;
    // A path that does not exist cannot be canonicalised; its lexical
    // form must not be trusted either, so it is refused the same way.
    let real = std::fs::canonicalize(&path).map_err(|e| {
        if lexically_under(Path::new(&path), &root) {
            AudioPathError::Unreadable {
                path: path.clone(),
                error: e.to_string(),
            }
        } else {
            AudioPathError::OutsideRoot(path.clone())
        }
    })?;
    if real.starts_with(&root) {
        Ok(real)
    } else {
        Err(AudioPathError::OutsideRoot(path))
    }
}

/// Whether `path` names something under `root` without following links
/// (only to choose the error message for a path that does not exist).
fn lexically_under(path: &Path, root: &Path) -> bool {
    use std::path::Component;
    let mut parts: Vec<Component> = Vec::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                parts.pop();
            }
            Component::CurDir => {}
            other => parts.push(other),
        }
    }
    parts.iter().collect::<PathBuf>().starts_with(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(tag: &str) -> (PathBuf, PathBuf) {
        let base =
            std::env::temp_dir().join(format!("s2t-audio-path-{tag}-{}", std::process::id()));
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.wav"), b"x").unwrap();
        std::fs::write(base.join("secret.txt"), b"x").unwrap();
        (base, root)
    }

    #[test]
    fn paths_under_the_root_resolve_and_escapes_are_refused() {
        let (base, root) = tree("escape");
        let r = root.display().to_string();
        let ok = resolve_file_uri(&format!("file://{r}/sub/a.wav"), Some(&root)).unwrap();
        assert_eq!(ok, std::fs::canonicalize(root.join("sub/a.wav")).unwrap());
        // `..` inside the root is fine; out of it is not.
        assert!(resolve_file_uri(&format!("file://{r}/sub/../sub/a.wav"), Some(&root)).is_ok());
        assert!(matches!(
            resolve_file_uri(&format!("file://{r}/../secret.txt"), Some(&root)),
            Err(AudioPathError::OutsideRoot(_))
        ));
        assert!(matches!(
            resolve_file_uri(&format!("file://{r}/../../../../etc/passwd"), Some(&root)),
            Err(AudioPathError::OutsideRoot(_))
        ));
        assert!(matches!(
            resolve_file_uri("file:///etc/passwd", Some(&root)),
            Err(AudioPathError::OutsideRoot(_))
        ));
        // Percent-encoded dots are dots.
        assert!(matches!(
            resolve_file_uri(&format!("file://{r}/%2e%2e/secret.txt"), Some(&root)),
            Err(AudioPathError::OutsideRoot(_))
        ));
        std::fs::remove_dir_all(&base).ok();
    }

    #[test]
    fn a_symlink_out_of_the_root_is_refused() {
        let (base, root) = tree("link");
        std::os::unix::fs::symlink(base.join("secret.txt"), root.join("sub/link.wav")).unwrap();
        std::os::unix::fs::symlink(root.join("sub/a.wav"), root.join("inside.wav")).unwrap();
        let r = root.display().to_string();
        assert!(matches!(
            resolve_file_uri(&format!("file://{r}/sub/link.wav"), Some(&root)),
            Err(AudioPathError::OutsideRoot(_))
        ));
        assert!(resolve_file_uri(&format!("file://{r}/inside.wav"), Some(&root)).is_ok());
        std::fs::remove_dir_all(&base).ok();
    }

    #[test]
    fn without_a_root_file_uris_are_refused_and_bad_forms_too() {
        assert_eq!(
            resolve_file_uri("file:///tmp/a.wav", None),
            Err(AudioPathError::NoRoot)
        );
        let (base, root) = tree("forms");
        assert!(matches!(
            resolve_file_uri("file://otherhost/a.wav", Some(&root)),
            Err(AudioPathError::NotAbsolute(_))
        ));
        let r = root.display().to_string();
        assert!(matches!(
            resolve_file_uri(&format!("file://{r}/missing.wav"), Some(&root)),
            Err(AudioPathError::Unreadable { .. })
        ));
        assert!(matches!(
            resolve_file_uri(&format!("file://{r}/../missing.wav"), Some(&root)),
            Err(AudioPathError::OutsideRoot(_))
        ));
        std::fs::remove_dir_all(&base).ok();
    }
}

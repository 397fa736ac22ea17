//! The CA's state files. Private ones (keys, the token HMAC key) are created 0600 and refused at
//! start when group or others can read them, as ssh refuses a private key; every write goes to
//! a temporary file renamed over the old one, so a crash leaves the old file or the new, never
//! half of one.

use std::io::Write;
use std::path::Path;

use super::CaError;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn create_dir(dir: &Path) -> Result<(), CaError> {
    std::fs::create_dir_all(dir).map_err(io(dir))
}

pub fn read_string(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// Reads a secret after checking nobody but the owner can read it.
pub fn read_private(path: &Path) -> Result<String, CaError> {
    check_private(path)?;
    read_string(path)
}

/// The same for binary secrets.
pub fn read_private_bytes(path: &Path) -> Result<Vec<u8>, CaError> {
    check_private(path)?;
    std::fs::read(path).map_err(io(path))
}

#[cfg(unix)]
pub fn check_private(path: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(io(path))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(CaError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn check_private(_path: &Path) -> Result<(), CaError> {
    Ok(())
}

/// Writes a secret: 0600 from the moment the file exists.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    write_atomic(path, bytes, 0o600)
}

/// Writes a file anyone may read (certificates, the trust bundle).
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    write_atomic(path, bytes, 0o644)
}

/// Creates `path` with `bytes` unless it exists: `Ok(false)` when another process (a second
/// control plane started on the same state directory) created it first.
pub fn create_exclusive(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, CaError> {
    let tmp = write_temp(path, bytes, mode)?;
    // link(2) never replaces an existing file, unlike rename(2).
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io(path)(e)),
    }
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let tmp = write_temp(path, bytes, mode)?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// A complete file beside `path` under a name no other writer uses.
fn write_temp(path: &Path, bytes: &[u8], mode: u32) -> Result<std::path::PathBuf, CaError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    // A stale temporary file may carry a wider mode than we want; start from nothing.
    let _ = std::fs::remove_file(&tmp);
    let mut file = options.open(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    Ok(tmp)
}

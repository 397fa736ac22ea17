//! The CA's state files. Private ones (keys, the token HMAC key) are created 0600 and refused at
//! start when group or others can read them, as ssh refuses a private key (the operator's
//! plug-in key has its own rule: [`check_plugin_key`]); every write goes to a temporary file
//! renamed over the old one, so a crash leaves the old file or the new, never half of one.

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

/// Reads a secret after checking nobody but the owner can read it; `what` names the file in
/// the refusal ("the admin token file, --admin-token-file"), so an operator knows which of
/// the plane's secrets it is.
pub fn read_private(path: &Path, what: &'static str) -> Result<String, CaError> {
    check_private(path, what)?;
    read_string(path)
}

/// The same for binary secrets.
pub fn read_private_bytes(path: &Path, what: &'static str) -> Result<Vec<u8>, CaError> {
    check_private(path, what)?;
    std::fs::read(path).map_err(io(path))
}

/// Reads the plug-in CA's key (`--ca-key`) in place, judged by [`check_plugin_key`].
pub fn read_plugin_key(path: &Path) -> Result<String, CaError> {
    check_plugin_key(path)?;
    read_string(path)
}

/// The plug-in key is put in place by the operator's tooling, not by us: a Kubernetes secret
/// mount (0644 by default, 0640 with an `fsGroup`), Istio's `cacerts`, a configuration
/// manager. Requiring 0600 there would refuse the usual deployments, so the rule is what the
/// key's exposure really is (close to PostgreSQL's for its server key):
/// - writable by group or others: refused, whatever else (whoever can replace the signing key
///   mints every identity of the mesh);
/// - readable by others while every directory above it lets others through: refused (any
///   local account can read it);
/// - readable by others behind a directory closed to them, or readable by a group: accepted
///   with a warning naming the file and its mode, except group-readable and owned by root
///   (a deliberate root-managed setup, such as a secret mount with `fsGroup`).
///
/// The keys the control plane writes itself (the root key, the token key) stay 0600
/// ([`check_private`]).
#[cfg(unix)]
pub fn check_plugin_key(path: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(io(path))?;
    let mode = meta.mode() & 0o777;
    let refuse = |problem: &str| CaError::PluginKeyPermissions {
        path: path.to_path_buf(),
        mode,
        problem: problem.to_string(),
    };
    if mode & 0o022 != 0 {
        return Err(refuse(
            "is writable by group or others: whoever can replace it can mint every identity \
             of the mesh",
        ));
    }
    if mode & 0o004 != 0 {
        let Some(closed) = closed_directory(path) else {
            return Err(refuse(
                "is readable by others, and every directory above it lets them through",
            ));
        };
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            closed_by = %closed.display(),
            "the plug-in CA key is readable by others; only the closed directory above it keeps \
             them out: prefer mode 0600 (or 0640 with a group only the control plane is in)"
        );
    } else if mode & 0o040 != 0 && meta.uid() != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            gid = meta.gid(),
            "the plug-in CA key is readable by its group: fine if only the control plane is in \
             that group, otherwise chmod 600"
        );
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn check_plugin_key(_path: &Path) -> Result<(), CaError> {
    Ok(())
}

/// The first directory above `path` (symlinks resolved, as a Kubernetes secret mount links
/// each file into a timestamped directory) that others may not pass through (no `o+x`).
#[cfg(unix)]
fn closed_directory(path: &Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let real = std::fs::canonicalize(path).ok()?;
    real.ancestors()
        .skip(1)
        .find(|dir| std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 == 0))
        .map(Path::to_path_buf)
}

#[cfg(unix)]
pub fn check_private(path: &Path, what: &'static str) -> Result<(), CaError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(io(path))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(CaError::KeyPermissions {
            what,
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn check_private(_path: &Path, _what: &'static str) -> Result<(), CaError> {
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

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// A key file of `mode` in its own directory of `dir_mode` under `base`.
    fn key_in(base: &Path, dir_mode: u32, mode: u32) -> PathBuf {
        let dir = base.join(format!("d{dir_mode:o}-{mode:o}"));
        std::fs::create_dir(&dir).expect("mkdir");
        let key = dir.join("ca-key.pem");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").expect("write");
        chmod(&key, mode);
        chmod(&dir, dir_mode);
        key
    }

    /// A temp directory every account may pass through, as `/etc/cacerts` usually is.
    fn open_base() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().expect("tempdir");
        chmod(tmp.path(), 0o755);
        assert_eq!(
            closed_directory(&tmp.path().join("x")),
            None,
            "a directory above the temp dir is closed to others: the refusals cannot be tested"
        );
        tmp
    }

    #[test]
    fn plugin_keys_are_judged_by_who_can_really_reach_them() {
        let tmp = open_base();
        let base = tmp.path();
        for (dir, mode) in [
            (0o755, 0o600),
            (0o755, 0o400),
            // Group-readable (a secret mount with fsGroup, or a root-managed 0640).
            (0o755, 0o640),
            (0o755, 0o440),
            // World-readable behind a directory closed to others (Istio's cacerts, restricted).
            (0o750, 0o644),
            (0o700, 0o444),
        ] {
            let key = key_in(base, dir, mode);
            assert!(
                check_plugin_key(&key).is_ok(),
                "{mode:o} in a {dir:o} directory refused"
            );
        }
        for (dir, mode, problem) in [
            (0o755, 0o644, "readable by others"),
            (0o755, 0o444, "readable by others"),
            (0o700, 0o660, "writable by group or others"),
            (0o700, 0o602, "writable by group or others"),
            (0o755, 0o620, "writable by group or others"),
        ] {
            let key = key_in(base, dir, mode);
            let err = check_plugin_key(&key).expect_err("accepted");
            let text = err.to_string();
            assert!(
                matches!(err, CaError::PluginKeyPermissions { mode: m, .. } if m == mode)
                    && text.contains(problem)
                    && text.contains(&key.display().to_string())
                    && text.contains("--ca-key")
                    && text.contains(&format!("mode {mode:o}"))
                    && text.contains("chmod 600"),
                "{mode:o} in {dir:o}: {text}"
            );
        }
    }

    /// Kubernetes mounts each secret key as a symlink into a timestamped directory: the file
    /// and the directories that count are the link's target's.
    #[test]
    fn a_secret_mount_is_judged_through_its_symlinks() {
        let tmp = open_base();
        let mount = tmp.path().join("cacerts");
        std::fs::create_dir(&mount).expect("mkdir");
        let data = mount.join("..2026_12_03");
        std::fs::create_dir(&data).expect("mkdir");
        std::fs::write(data.join("ca-key.pem"), "key").expect("write");
        chmod(&data.join("ca-key.pem"), 0o644);
        std::os::unix::fs::symlink("..2026_12_03", mount.join("..data")).expect("symlink");
        std::os::unix::fs::symlink("..data/ca-key.pem", mount.join("ca-key.pem")).expect("link");
        let key = mount.join("ca-key.pem");
        // The default mount: 0644 files, directories open to all.
        assert!(check_plugin_key(&key).is_err());
        // defaultMode 0440 with an fsGroup.
        chmod(&data.join("ca-key.pem"), 0o440);
        assert!(check_plugin_key(&key).is_ok());
        // 0644 kept out by the data directory.
        chmod(&data.join("ca-key.pem"), 0o644);
        chmod(&data, 0o750);
        assert!(check_plugin_key(&key).is_ok());
        assert_eq!(read_plugin_key(&key).expect("read"), "key");
    }

    #[test]
    fn keys_the_control_plane_writes_itself_stay_0600() {
        let tmp = open_base();
        for mode in [0o640, 0o604, 0o644] {
            let key = key_in(tmp.path(), 0o700, mode);
            assert!(
                matches!(
                    check_private(&key, "a test key"),
                    Err(CaError::KeyPermissions { .. })
                ),
                "{mode:o} accepted"
            );
        }
        assert!(check_private(&key_in(tmp.path(), 0o700, 0o600), "a test key").is_ok());
    }
}

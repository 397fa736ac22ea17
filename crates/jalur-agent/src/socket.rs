//! The SDS socket file: created with mode 0600 before anyone can reach it by its name.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use tokio::net::{UnixListener, UnixStream};

use crate::AgentError;

/// Binds a Unix socket at `path` that only this user (Envoy runs as it) may connect to.
///
/// The socket is bound under a temporary name, made 0600, then renamed onto `path`: a rename is
/// atomic, so there is no moment when `path` exists with the umask's wider mode (changing the
/// process umask instead would race with every other thread creating files). A stale socket at
/// `path` (a previous agent that died) is replaced; a live one (another agent answering on it) or
/// anything that is not a socket is refused.
pub(crate) async fn bind_private(path: &Path) -> Result<UnixListener, AgentError> {
    let err = |reason: String| AgentError::Socket {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(err(
                "exists and is not a socket; refusing to replace it".into()
            ))
        }
        Ok(_) => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(err(
                    "another process is serving on it (is an agent already running?)".into(),
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    let name = path
        .file_name()
        .ok_or_else(|| err("has no file name".into()))?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|e| err(format!("cannot bind: {e}")))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(format!("cannot make it private: {e}")));
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_socket_is_private_replaces_a_stale_one_and_refuses_other_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("sds.sock");
        let first = bind_private(&path).await.expect("bind");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

        // Someone answers on it: a second agent must not steal it.
        let live = bind_private(&path).await.expect_err("live socket replaced");
        assert!(live.to_string().contains("another process"), "{live}");

        // The first agent died without cleaning up: the stale socket is replaced.
        drop(first);
        let _second = bind_private(&path).await.expect("stale socket replaced");

        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "x").expect("write");
        let refused = bind_private(&file).await.expect_err("file replaced");
        assert!(refused.to_string().contains("is not a socket"), "{refused}");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "x");
    }
}

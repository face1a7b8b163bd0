//! Secret values (tokens, client secrets): read from files, handed to the
//! code that sends them, and never printed. `Debug` shows a placeholder and
//! there is no `Display`, so a secret cannot reach a log line, an error or a
//! metric label by accident.

use std::path::{Path, PathBuf};

/// A secret string. Its value is only reachable through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that sends it (a header, a form field).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a secret from a file, without the line break editors and
    /// Kubernetes Secrets leave at its end. An empty file is an error.
    pub async fn read_file(path: &Path) -> Result<Self, SecretFileError> {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| SecretFileError::Read {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        let value = text.trim_end_matches(['\r', '\n', ' ', '\t']);
        if value.trim().is_empty() {
            return Err(SecretFileError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Self(value.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A secret file that cannot be used. Names the file, never its contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretFileError {
    #[error("reading the secret file {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("the secret file {} is empty", path.display())]
    Empty { path: PathBuf },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[tokio::test]
    async fn files_lose_their_trailing_line_break_and_empty_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "abc.def\n").unwrap();
        assert_eq!(Secret::read_file(&file).await.unwrap().expose(), "abc.def");
        std::fs::write(&file, "\n").unwrap();
        let err = Secret::read_file(&file).await.unwrap_err();
        assert!(matches!(err, SecretFileError::Empty { .. }), "{err}");
        let missing = dir.path().join("missing");
        let err = Secret::read_file(&missing).await.unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}

//! How the importer authenticates to a protected source: not at all, with a
//! bearer token read from a file, or with OAuth 2.0 client credentials
//! ([`crate::oauth`]). Either way the source gets `Authorization: Bearer …`.
//!
//! The token file is read for every request, so a rotated token (a
//! Kubernetes Secret updated in place) is used from the next request on.
//! An OAuth token the source refuses (401) is fetched anew, once per request.

use std::path::PathBuf;

use herald_runtime::secret::{Secret, SecretFileError};

use crate::oauth::{ClientCredentials, TokenError};

/// Credentials for the source.
#[derive(Debug, Default)]
pub enum SourceAuth {
    #[default]
    None,
    /// `--bearer-token-file`.
    BearerFile(PathBuf),
    /// `--oauth-token-url` and the client's id and secret.
    ClientCredentials(Box<ClientCredentials>),
}

/// No token to send.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("the bearer token: {0}")]
    TokenFile(#[from] SecretFileError),
    #[error(transparent)]
    OAuth(#[from] TokenError),
}

impl SourceAuth {
    /// The token for the next request; `None` without authentication.
    pub async fn token(&self) -> Result<Option<Secret>, AuthError> {
        match self {
            SourceAuth::None => Ok(None),
            SourceAuth::BearerFile(path) => Ok(Some(Secret::read_file(path).await?)),
            SourceAuth::ClientCredentials(client) => Ok(Some(client.token().await?)),
        }
    }

    /// After the source answered 401: whether asking again with a new token
    /// may help (an OAuth token is dropped, so the next one is fetched anew;
    /// a token file was just read and would give the same).
    pub async fn renew(&self) -> bool {
        match self {
            SourceAuth::None | SourceAuth::BearerFile(_) => false,
            SourceAuth::ClientCredentials(client) => {
                client.invalidate().await;
                true
            }
        }
    }

    /// For logs: which method, never a value.
    pub fn method(&self) -> &'static str {
        match self {
            SourceAuth::None => "none",
            SourceAuth::BearerFile(_) => "bearer token file",
            SourceAuth::ClientCredentials(_) => "oauth client credentials",
        }
    }
}

//! A catalog source and how its listing is fetched: a file, read whole; a
//! registry API (the official registry, another Herald), read page by page
//! following `nextCursor`, whole or only `updated_since` a time (asking for
//! `include_deleted` too, so the deletions come with it); or the URL
//! of a ToolHive `registry.json`, read whole. Documents are parsed by
//! `herald_core::import`; entries come back unscreened (see
//! [`crate::screen`]).
//!
//! Fetching publishes nothing, so it may stop anywhere: at shutdown it stops
//! before the next page, and a request in flight is abandoned.

use std::path::PathBuf;
use std::str::FromStr;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use herald_core::ServerName;
use herald_core::catalog_record::CatalogEntry;
use herald_core::import::{self, CatalogError, EntryError};
use herald_runtime::http::{HttpClient, HttpError, RedactedUrl, StatusCode, Url};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, SourceAuth};

/// Entries per page asked of a registry API (the official maximum).
const PAGE_LIMIT: &str = "100";
/// Pages followed at most, so a server that keeps returning a cursor
/// cannot keep a sync going forever.
const MAX_PAGES: usize = 10_000;

/// The format of a catalog source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Official list (`servers` is an array) or ToolHive (`servers` /
    /// `remote_servers` maps), decided per document.
    Auto,
    Official,
    ToolHive,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Format::Auto),
            "official" => Ok(Format::Official),
            "toolhive" => Ok(Format::ToolHive),
            other => Err(format!(
                "unknown catalog format {other:?}: expected auto, official or toolhive"
            )),
        }
    }
}

/// Where the catalog comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    /// A registry API base URL (`…/v0.1/servers` is appended unless the path
    /// already ends in `/servers`); with `--format toolhive`, the URL of a
    /// `registry.json` document.
    Url(Url),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(path) => write!(f, "file {}", path.display()),
            Location::Url(url) => write!(f, "URL {}", RedactedUrl::new(url)),
        }
    }
}

/// A listing that could not be fetched; nothing is published then.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    #[error("reading {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("authenticating to {location}: {reason}")]
    Auth { location: String, reason: AuthError },
    #[error("{location} is not a usable catalog: {reason}")]
    Document { location: String, reason: String },
    #[error("{location}: more than {MAX_PAGES} pages")]
    TooManyPages { location: String },
    #[error("stopped by shutdown before the listing was complete")]
    Interrupted,
}

/// The entries of a source as fetched, and whether the listing is whole
/// (and so may withdraw what it lacks).
#[derive(Debug)]
pub struct Listing {
    pub entries: Vec<Result<CatalogEntry, EntryError>>,
    /// Entries the source reports deleted (a registry API's `deleted`
    /// status): withdrawn by any sync, full or not.
    pub deleted: Vec<(ServerName, String)>,
    pub full: bool,
}

/// The entries of a listing, and the (name, version)s it reports deleted.
type Pages = (
    Vec<Result<CatalogEntry, EntryError>>,
    Vec<(ServerName, String)>,
);

/// A source and the means to read it.
#[derive(Debug)]
pub struct Source {
    pub location: Location,
    pub format: Format,
    /// Prefix of ToolHive's short names (`fetch` → `<namespace>/fetch`).
    pub toolhive_namespace: String,
    pub http: HttpClient,
    pub auth: SourceAuth,
}

impl Source {
    /// The listing; `since` asks a registry API only for entries updated
    /// since then (a partial listing). Stops early at `shutdown`.
    pub async fn fetch(
        &self,
        since: Option<DateTime<Utc>>,
        shutdown: &CancellationToken,
    ) -> Result<Listing, SourceError> {
        let fetch = async {
            match &self.location {
                Location::File(path) => {
                    let bytes = tokio::fs::read(path).await.map_err(|e| SourceError::Read {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                    Ok(Listing {
                        entries: self.parse_document(&bytes)?,
                        deleted: Vec::new(),
                        full: true,
                    })
                }
                Location::Url(url) if self.format == Format::ToolHive => {
                    let bytes = self.get(url, &[]).await?;
                    Ok(Listing {
                        entries: self.parse_document(&bytes)?,
                        deleted: Vec::new(),
                        full: true,
                    })
                }
                Location::Url(url) => {
                    let (entries, deleted) = self.fetch_pages(url, since, shutdown).await?;
                    Ok(Listing {
                        entries,
                        deleted,
                        full: since.is_none(),
                    })
                }
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => Err(SourceError::Interrupted),
            listing = fetch => listing,
        }
    }

    /// Every page of an official list, following `nextCursor`; the entries
    /// and the deleted (name, version)s.
    async fn fetch_pages(
        &self,
        base: &Url,
        since: Option<DateTime<Utc>>,
        shutdown: &CancellationToken,
    ) -> Result<Pages, SourceError> {
        let url = list_url(base);
        let since = since.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        let mut cursor: Option<String> = None;
        let mut entries = Vec::new();
        let mut deleted = Vec::new();
        for _ in 0..MAX_PAGES {
            if shutdown.is_cancelled() {
                return Err(SourceError::Interrupted);
            }
            let mut query: Vec<(&str, &str)> = vec![("limit", PAGE_LIMIT)];
            if let Some(c) = &cursor {
                query.push(("cursor", c));
            }
            if let Some(s) = &since {
                // Implied by `updated_since` in the official API; said
                // anyway for servers that read only what is given.
                query.push(("updated_since", s));
                query.push(("include_deleted", "true"));
            }
            let bytes = self.get(&url, &query).await?;
            let page = import::parse_official_page(&bytes).map_err(|e| SourceError::Document {
                location: RedactedUrl::new(&url).to_string(),
                reason: e.to_string(),
            })?;
            entries.extend(page.entries);
            deleted.extend(page.deleted);
            match page.next_cursor {
                Some(next) if Some(&next) != cursor.as_ref() => cursor = Some(next),
                _ => return Ok((entries, deleted)),
            }
        }
        Err(SourceError::TooManyPages {
            location: RedactedUrl::new(&url).to_string(),
        })
    }

    /// The body of a successful GET, with the source's credentials; a 401
    /// gets one more try with a new token when that may help.
    async fn get(&self, url: &Url, query: &[(&str, &str)]) -> Result<Bytes, SourceError> {
        let mut renewed = false;
        loop {
            let token = self
                .auth
                .token()
                .await
                .map_err(|reason| SourceError::Auth {
                    location: self.location.to_string(),
                    reason,
                })?;
            let mut request = self
                .http
                .get(url)
                .query(query)
                .header("accept", "application/json");
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            match request.success().await {
                Err(e)
                    if e.status() == Some(StatusCode::UNAUTHORIZED)
                        && !renewed
                        && self.auth.renew().await =>
                {
                    tracing::info!(source = %self.location, "the source refused the token; getting a new one");
                    renewed = true;
                }
                result => return Ok(result?),
            }
        }
    }

    fn parse_document(
        &self,
        bytes: &[u8],
    ) -> Result<Vec<Result<CatalogEntry, EntryError>>, SourceError> {
        let document = |e: CatalogError| SourceError::Document {
            location: self.location.to_string(),
            reason: e.to_string(),
        };
        let format = match self.format {
            Format::Auto => {
                let doc: Value = serde_json::from_slice(bytes)
                    .map_err(|e| document(CatalogError::NotJson(e.to_string())))?;
                if doc["servers"].is_array() {
                    Format::Official
                } else {
                    Format::ToolHive
                }
            }
            other => other,
        };
        match format {
            Format::ToolHive => {
                import::parse_toolhive_registry(bytes, &self.toolhive_namespace).map_err(document)
            }
            _ => import::parse_official_page(bytes)
                .map(|page| page.entries)
                .map_err(document),
        }
    }
}

/// `<base>/v0.1/servers`, unless the base already names the list; the
/// base's own query parameters are kept.
fn list_url(base: &Url) -> Url {
    let mut url = base.clone();
    let path = base.path().trim_end_matches('/');
    if !path.ends_with("/servers") {
        url.set_path(&format!("{path}/v0.1/servers"));
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_url_is_derived_from_the_base() {
        let list = |base: &str| list_url(&Url::parse(base).unwrap()).to_string();
        assert_eq!(list("http://h:8080"), "http://h:8080/v0.1/servers");
        assert_eq!(
            list("http://h/registry/default/"),
            "http://h/registry/default/v0.1/servers"
        );
        assert_eq!(list("https://h/v0/servers"), "https://h/v0/servers");
        assert_eq!(
            list("https://h/api?tenant=a"),
            "https://h/api/v0.1/servers?tenant=a"
        );
    }

    #[test]
    fn a_location_never_shows_credentials() {
        let url = Url::parse("https://user:pw@registry.example/api?key=k").unwrap();
        assert_eq!(
            Location::Url(url).to_string(),
            "URL https://registry.example/api"
        );
    }
}

//! A deployment's container image as a `server.json` package, so that a
//! client can run the server itself instead of calling the deployed remote.
//!
//! Only an `MCPServer` runs an image of its own (a proxy, a virtual server
//! and an entry do not). The package is `registryType` `oci`, `identifier`
//! the image without tag or digest (`ghcr.io/org/server`), `version` the
//! tag as written (`v1.2.3`: what a runtime pulls). An image without a
//! publishable tag ([`crate::version`]: none, a digest only, `latest`, a
//! channel) or that does not parse as an image reference gives no package:
//! a package must name one fixed image.
//!
//! The transport is the container's own, `spec.transport` (`spec.proxyMode`
//! is how ToolHive's proxy re-exposes a stdio server, not what the image
//! speaks): `stdio`, or `sse`/`streamable-http` at
//! `http://localhost:<port>/sse` or `/mcp`, the port being `spec.mcpPort`,
//! else `spec.targetPort`, else 8080.

use crate::image::ImageRef;
use crate::record::{Package, PackageTransport};
use crate::rejection::Rejection;
use crate::version;

/// `registryType` of a container image.
pub const OCI: &str = "oci";
/// The container port when the spec names none.
pub const DEFAULT_CONTAINER_PORT: u16 = 8080;

/// The package of an image speaking `transport` on `port` (module docs).
pub fn of(image: &str, transport: &str, port: u16) -> Option<Package> {
    let image = ImageRef::parse(image.trim())?;
    let tag = image.tag?;
    version::from_tag(tag)?;
    Some(Package {
        registry_type: OCI.to_owned(),
        identifier: image.name.to_owned(),
        version: tag.to_owned(),
        transport: transport_of(transport, port)?,
    })
}

fn transport_of(transport: &str, port: u16) -> Option<PackageTransport> {
    let path = match transport {
        "stdio" => {
            return Some(PackageTransport {
                kind: transport.to_owned(),
                url: None,
            });
        }
        "sse" => "/sse",
        "streamable-http" => "/mcp",
        _ => return None,
    };
    (port > 0).then(|| PackageTransport {
        kind: transport.to_owned(),
        url: Some(format!("http://localhost:{port}{path}")),
    })
}

/// A package read from the stream or a bucket is one [`of`] would build.
pub fn check(p: &Package) -> Result<(), Rejection> {
    let malformed = |what: &str| Rejection::Malformed(format!("the package {what}"));
    if p.registry_type != OCI {
        return Err(malformed("is not a container image (registryType oci)"));
    }
    let port = match &p.transport.url {
        None => 0,
        Some(url) => url
            .strip_prefix("http://localhost:")
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(port, _)| port.parse::<u16>().ok())
            .ok_or_else(|| malformed("transport URL is not a localhost URL"))?,
    };
    let rebuilt = of(
        &format!("{}:{}", p.identifier, p.version),
        &p.transport.kind,
        port,
    );
    if rebuilt.as_ref() != Some(p) {
        return Err(malformed(
            "is not an image name with a publishable tag and the transport it speaks",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_with_a_publishable_tag_is_a_package() {
        let p = of("ghcr.io/org/fetch:v1.2.3", "stdio", 0).unwrap();
        assert_eq!(
            (
                p.registry_type.as_str(),
                p.identifier.as_str(),
                p.version.as_str()
            ),
            ("oci", "ghcr.io/org/fetch", "v1.2.3")
        );
        assert_eq!(p.transport.url, None);
        check(&p).unwrap();
        let http = of("org/srv:2.0.0", "streamable-http", 9000).unwrap();
        assert_eq!(
            http.transport.url.as_deref(),
            Some("http://localhost:9000/mcp")
        );
        check(&http).unwrap();
        let sse = of("org/srv:2.0.0", "sse", 8080).unwrap();
        assert_eq!(
            sse.transport.url.as_deref(),
            Some("http://localhost:8080/sse")
        );
    }

    #[test]
    fn no_package_without_one_fixed_image() {
        let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        for image in [
            "org/srv".to_owned(),
            "org/srv:latest".to_owned(),
            "org/srv:stable".to_owned(),
            format!("org/srv@{digest}"),
            "Org/Srv:1.0.0".to_owned(),
            "org/srv:1.0.0 --privileged".to_owned(),
        ] {
            assert_eq!(of(&image, "stdio", 0), None, "{image}");
        }
        assert_eq!(of("org/srv:1.0.0", "websocket", 80), None);
        assert_eq!(of("org/srv:1.0.0", "sse", 0), None);
    }

    #[test]
    fn a_tampered_package_is_refused() {
        let good = of("org/srv:1.0.0", "sse", 8080).unwrap();
        let mut p = good.clone();
        p.transport.url = Some("http://evil.example/sse".to_owned());
        assert!(check(&p).is_err());
        let mut p = good.clone();
        p.identifier = "org/srv:2.0.0".to_owned();
        assert!(check(&p).is_err());
        let mut p = good.clone();
        p.version = "latest".to_owned();
        assert!(check(&p).is_err());
        let mut p = good;
        p.registry_type = "npm".to_owned();
        assert!(check(&p).is_err());
    }
}

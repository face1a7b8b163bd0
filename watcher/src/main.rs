//! herald-watcher: parses flags and runs the watcher (see the library docs).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use herald_core::ownership::{NameGrant, NameOwnership};
use herald_core::policy::{NamespacePolicy, RegistryRule};
use herald_core::validate::UrlRules;
use herald_core::{ClusterId, RegistryName, WatcherPolicy};
use herald_runtime::logging::LogArgs;
use herald_runtime::nats::NatsArgs;
use herald_runtime::stream::StreamArgs;

/// Watches opted-in ToolHive servers (MCPServer, MCPRemoteProxy,
/// VirtualMCPServer) in one Kubernetes cluster and publishes their lifecycle
/// as events on the JetStream stream HERALD_EVENTS.
///
/// Kubernetes access comes from KUBECONFIG, else the in-cluster service account.
#[derive(Debug, Parser)]
#[command(name = "herald-watcher", version)]
struct Cli {
    /// This cluster's id in subjects and records: a lowercase DNS label, unique
    /// among the clusters that publish to the same NATS.
    #[arg(long, env = "HERALD_CLUSTER_ID", value_parser = parse_cluster_id)]
    cluster_id: ClusterId,
    /// Registry of opted-in objects without a registry-name label.
    #[arg(long, env = "HERALD_DEFAULT_REGISTRY", default_value = "default", value_parser = parse_registry)]
    default_registry: RegistryName,
    /// Watch only these namespaces (comma-separated); default: all namespaces.
    #[arg(long, env = "HERALD_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Reject objects without the registry-url annotation (a central registry
    /// has no use for cluster-local URLs).
    #[arg(long, env = "HERALD_REQUIRE_URL_ANNOTATION")]
    require_url_annotation: bool,
    /// Only these namespaces may publish into this registry, written
    /// `registry=ns1,ns2`; repeat the flag for more registries (environment:
    /// rules separated by `;`).
    #[arg(long = "registry-namespaces", env = "HERALD_REGISTRY_NAMESPACES", value_delimiter = ';', value_parser = parse_rule)]
    registry_namespaces: Vec<RegistryRule>,
    /// Grants a server name, or every name under a prefix ending in `*`, to
    /// namespaces, written `[registry:]name=ns1,ns2` (e.g.
    /// `io.github.github/*=tools,platform`); repeat for more (environment:
    /// grants separated by `;`). A server's default name
    /// `com.toolhive.k8s.<namespace>/<name>` belongs to its own namespace;
    /// any other name (annotation registry-server-name) is rejected unless
    /// a grant gives it to the object's namespace. Give the hub's projector
    /// the same grants.
    #[arg(long = "grant-name", env = "HERALD_GRANT_NAME", value_delimiter = ';', value_parser = parse_grant)]
    grant_names: Vec<NameGrant>,
    /// A file holding this cluster's signing key (an nkey seed, `S…`;
    /// `herald-projector keygen` makes one). Every event is signed with it,
    /// so a hub that knows the public key accepts only this watcher's
    /// events for this cluster.
    #[arg(long, env = "HERALD_SIGNING_KEY_FILE")]
    signing_key_file: Option<std::path::PathBuf>,
    /// Also advertise URLs whose host is a loopback address or `localhost`
    /// (for a registry on one machine; never for a shared one).
    #[arg(long, env = "HERALD_ALLOW_LOOPBACK_URLS")]
    allow_loopback_urls: bool,
    /// Advertise each MCPServer's container image as an `oci` package of its
    /// entry (`--packages=false`: remotes only).
    #[arg(long, env = "HERALD_PACKAGES", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    packages: bool,
    /// Registries without a --registry-namespaces rule accept no namespace.
    #[arg(long, env = "HERALD_DENY_UNLISTED_REGISTRIES")]
    deny_unlisted_registries: bool,
    /// How often to publish a cluster.heartbeat event.
    #[arg(long, env = "HERALD_HEARTBEAT_INTERVAL", default_value = "30s", value_parser = herald_runtime::duration::positive)]
    heartbeat_interval: Duration,
    /// How often to look again for a kind the cluster does not serve, the
    /// fallback to watching CustomResourceDefinitions (which finds a kind
    /// installed later within seconds, when the watcher may read CRDs).
    #[arg(long, env = "HERALD_KIND_RECHECK_INTERVAL", default_value = "30s", value_parser = herald_runtime::duration::positive)]
    kind_recheck_interval: Duration,
    /// On SIGTERM, how long to keep publishing pending events before exiting.
    #[arg(long, env = "HERALD_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = herald_runtime::duration::positive)]
    shutdown_timeout: Duration,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "HERALD_HEALTH_LISTEN", default_value = "0.0.0.0:8081")]
    health_listen: SocketAddr,
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    stream: StreamArgs,
    #[command(flatten)]
    log: LogArgs,
}

fn parse_cluster_id(s: &str) -> Result<ClusterId, String> {
    s.parse().map_err(|e| format!("{e}"))
}

fn parse_registry(s: &str) -> Result<RegistryName, String> {
    s.parse().map_err(|e| format!("{e}"))
}

fn parse_rule(s: &str) -> Result<RegistryRule, String> {
    s.parse()
}

fn parse_grant(s: &str) -> Result<NameGrant, String> {
    s.parse()
}

impl Cli {
    fn settings(self) -> Result<herald_watcher::Settings, String> {
        if let Some(bad) = self
            .namespaces
            .iter()
            .find(|ns| !herald_core::ids::is_dns_label(ns))
        {
            return Err(format!("--namespaces: {bad:?} is not a namespace name"));
        }
        let mut namespaces = NamespacePolicy::default();
        for rule in self.registry_namespaces {
            namespaces = namespaces.with_rule(rule);
        }
        if self.deny_unlisted_registries {
            namespaces = namespaces.deny_unlisted();
        }
        let mut policy = WatcherPolicy::new(self.cluster_id);
        policy.default_registry = self.default_registry;
        policy.require_url_annotation = self.require_url_annotation;
        policy.namespaces = namespaces;
        policy.names = NameOwnership::new(self.grant_names);
        policy.packages = self.packages;
        policy.urls = UrlRules {
            allow_loopback: self.allow_loopback_urls,
        };
        Ok(herald_watcher::Settings {
            policy,
            namespaces: self.namespaces,
            heartbeat_interval: self.heartbeat_interval,
            kind_recheck_interval: self.kind_recheck_interval,
            shutdown_timeout: self.shutdown_timeout,
            health_listen: self.health_listen,
            nats: self.nats,
            stream: self.stream,
            signer: herald_runtime::signing::signer_from(self.signing_key_file.as_deref())
                .map_err(|e| e.to_string())?
                .map(std::sync::Arc::new),
        })
    }
}

/// Clap's error on one line, without the usage block but with what it
/// names (e.g. the missing flags, which clap lists on lines of their own).
fn one_line(err: &clap::Error) -> String {
    let text = err.to_string();
    let words: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if words.is_empty() {
        "invalid arguments".to_owned()
    } else {
        words.join(" ")
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            eprintln!("herald-watcher: {}", one_line(&err));
            return ExitCode::from(2);
        }
    };
    cli.log.init();
    let settings = match cli.settings() {
        Ok(s) => s,
        Err(reason) => {
            eprintln!("herald-watcher: {reason}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("herald-watcher: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = herald_runtime::shutdown::on_signal()?;
        herald_watcher::run(settings, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Logged once: the log goes to stderr already.
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_flag_is_named_on_one_line() {
        let err = Cli::try_parse_from(["herald-watcher"]).unwrap_err();
        let line = one_line(&err);
        assert!(line.contains("--cluster-id"), "{line}");
        assert!(!line.contains('\n') && !line.contains("Usage"), "{line}");
    }

    #[test]
    fn packages_are_on_unless_turned_off() {
        let parse = |extra: &[&str]| {
            let args = [&["herald-watcher", "--cluster-id", "c1"], extra].concat();
            Cli::try_parse_from(args).map(|cli| cli.packages)
        };
        assert!(parse(&[]).unwrap());
        assert!(!parse(&["--packages=false"]).unwrap());
        assert!(parse(&["--packages", "true"]).unwrap());
        assert!(parse(&["--packages=maybe"]).is_err());
    }
}

//! Test harness for Herald: starts real servers on loopback and cleans up after them.
//!
//! Layout:
//! - [`tools`]: where `scripts/test-deps` installed the servers, and Herald's own binaries;
//! - [`process`]: [`process::ChildProcess`], every spawned process, with its log file;
//! - [`dir`]: test folders, kept when a test fails;
//! - [`ports`]: free loopback ports and retries when one was taken;
//! - [`timeout`]: [`timeout::within`] and [`timeout::eventually`], bounded waiting;
//! - [`nats`]: [`nats::NatsServer`] and [`nats::NatsCluster`] (JetStream);
//! - [`kube`]: [`kube::KubeApi`], etcd and an API server with the ToolHive CRDs;
//! - [`objects`]: ToolHive objects in those servers: the API of a kind, opted-in
//!   objects, status and patches;
//! - [`events`]: events as the watcher publishes them (withdrawals, `Nats-Msg-Id`), for
//!   tests that write the stream directly;
//! - [`herald`]: [`herald::Herald`], the one way to start Herald's binaries (the catalog
//!   importer's name in [`herald::CATALOG_SYNC`]): long-running as a
//!   [`herald::HeraldProcess`] (ready on /readyz, restartable), or run to completion
//!   with its output captured;
//! - [`stack`]: [`stack::Stack`], the whole pipeline (NATS, an API server and a watcher
//!   per cluster, projector, API) and the helpers its tests repeat;
//! - [`roles`]: the NATS roles of `deploy/nats/permissions.conf` with the test's own keys
//!   ([`roles::RoleKeys`], [`roles::render_permissions`]);
//! - [`local`]: [`local::LocalEnv`], `scripts/local` on free ports in a test folder;
//! - [`oidc`]: [`oidc::OidcProvider`], a real OpenID Provider (`integration-tests/oidc`,
//!   npm `oidc-provider` on the machine's Node.js) issuing tokens with chosen claims;
//! - [`sse`]: the frames of `herald-api`'s event feed, parsed as bytes arrive;
//! - [`browser`]: [`browser::Browser`], a headless Chromium over WebDriver for the
//!   registry page;
//! - [`storm`]: seeded random changes to MCPServers, run while a fault is injected;
//! - [`oracle`]: what `herald-api` must serve given the clusters' objects, and the check
//!   that it does (nothing lost, nothing phantom);
//! - [`netns`]: [`netns::Network`], several hosts on one machine (network namespaces
//!   joined by veth links; partitions are links set down);
//! - [`link_proxy`]: [`link_proxy::LinkProxy`], a TCP proxy adding delay and loss, cut
//!   and healed at run time;
//! - [`multihost`]: [`multihost::MultiHost`], the hub (three NATS nodes, projector, API)
//!   and workload clusters (API server, leaf NATS, watcher) on hosts of their own;
//! - [`large_stack`]: async tests on a thread with a stack big enough for kube's futures
//!   ([`large_stack_test!`]);
//!
//! Conventions:
//! - every server gets free loopback ports and its own folder under the system temp
//!   folder, with its log; a server is killed when its handle is dropped, and when the test
//!   process dies, even by SIGKILL;
//! - when a test panics, the end of each server's log is printed and the folders are kept
//!   (their paths printed). A test that returns `Err` drops its servers without panicking:
//!   set `HERALD_KEEP_TEST_DIRS=1` to keep the folders then;
//! - nothing waits by sleeping: `within` bounds a future, `eventually` polls a condition
//!   (a sleep is the length of a fault, as in [`nats::NatsServer::outage`], or a pace);
//! - Herald's binaries are found with [`tools::herald_binary`] after
//!   `cargo build --workspace --bins`, and started only through [`herald::Herald`].
//!
//! Tests live in `tests/`, a file per binary or concern (`harness.rs` checks this crate
//! itself); `src/bin/herald-bench` is the benchmark, which starts Herald the same way.

pub mod browser;
pub mod dir;
pub mod events;
pub mod herald;
pub mod kube;
pub mod large_stack;
pub mod link_proxy;
pub mod local;
pub mod multihost;
pub mod nats;
pub mod netns;
pub mod objects;
pub mod oidc;
pub mod oracle;
pub mod ports;
pub mod process;
pub mod roles;
pub mod sse;
pub mod stack;
pub mod storm;
pub mod timeout;
pub mod tools;

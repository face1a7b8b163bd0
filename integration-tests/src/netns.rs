//! Several hosts on one machine: a [`Network`] of Linux network namespaces, one per
//! host, for tests of partitions between hosts.
//!
//! Every host has two links:
//! - `ctl`, a veth pair straight to the test process's namespace (a /30 of its own):
//!   the test reaches every host through it (Kubernetes API, Herald's HTTP ports, NATS
//!   clients) and it is never cut, so a storm and the oracle go on during a partition;
//! - `net`, a veth to a bridge in a switch namespace, with an address in
//!   [`DATA_SUBNET`]: the hosts talk to each other only over it (NATS routes, leaf
//!   connections, Herald's NATS clients). A partition sets the switch's end of a host's
//!   link down ([`Network::cut`]); healing sets it up again.
//!
//! Names are unique per run (`hz-<pid>-<n>-…`); dropping the network deletes its
//! namespaces, which deletes every veth (also the ends in the test's namespace).
//! A run that died without dropping it leaves namespaces behind: the next
//! [`Network::create`] deletes those whose process is gone. Control subnets are
//! chosen under a lock file among those no address of this namespace uses.
//!
//! Creating namespaces needs root (CI runs as root); [`Network::create`] returns
//! [`Unavailable`] where it cannot, and tests skip with a message then.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context as _, bail};

/// The subnet of the hosts' `net` links. Only the namespaces of one network see it,
/// so every network can use the same.
pub const DATA_SUBNET: [u8; 3] = [192, 168, 77];
/// Prefix of every namespace this module creates.
const PREFIX: &str = "hz-";
/// Serializes the choice of control subnets and the cleanup of leftovers between
/// test processes.
const LOCK_FILE: &str = "/tmp/herald-netns.lock";

/// Namespaces cannot be created here (not root, no `ip`): tests skip.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "network namespaces are not available: {}", self.0)
    }
}

impl std::error::Error for Unavailable {}

/// One host: a network namespace and its two addresses.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    /// The namespace (`ip netns exec <netns> …`).
    pub netns: String,
    /// Its address on the control link, reachable from the test process.
    pub ctl: Ipv4Addr,
    /// Its address on the data network, reachable from the other hosts.
    pub data: Ipv4Addr,
    /// The test's end of the control link: where the host reaches the test process
    /// (e.g. a [`crate::link_proxy::LinkProxy`] listening there).
    pub gateway: Ipv4Addr,
    /// The switch's end of its data link.
    port: String,
    /// The test's end of its control link (an interface of the test's namespace).
    outside: String,
}

impl Host {
    /// `program` to be run in this host's namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns]).arg(program);
        command
    }
}

/// The namespaces of one test: a switch and the hosts. Dropping it deletes them.
#[derive(Debug)]
pub struct Network {
    switch: String,
    hosts: Vec<Host>,
}

impl Network {
    /// Creates one namespace per name (`names` short, distinct: `n0`, `w-east`), linked
    /// to the test's namespace and to one switch.
    pub fn create(names: &[&str]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !names.is_empty() && names.len() <= 60,
            "1 to 60 hosts per network"
        );
        probe()?;
        static NETWORKS: AtomicUsize = AtomicUsize::new(0);
        let tag = format!(
            "{}-{}",
            std::process::id(),
            NETWORKS.fetch_add(1, Ordering::Relaxed)
        );
        let lock = File::create(LOCK_FILE).with_context(|| format!("creating {LOCK_FILE}"))?;
        lock.lock()
            .with_context(|| format!("locking {LOCK_FILE}"))?;
        remove_leftovers();
        let base = free_control_block()?;
        let switch = format!("{PREFIX}{tag}-sw");
        let mut network = Self {
            switch: switch.clone(),
            hosts: Vec::new(),
        };
        ip(&["netns", "add", &switch])?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        for (i, name) in names.iter().enumerate() {
            let i = u8::try_from(i).expect("at most 60 hosts");
            let netns = format!("{PREFIX}{tag}-{name}");
            // Interface names have at most 15 bytes; the one in our namespace must be
            // unique on the machine: the network's number in the block plus the host.
            let outside = format!("hz{:x}{:x}c{i}", base[1], base[2]);
            let (gateway, ctl) = (
                Ipv4Addr::new(base[0], base[1], base[2], 4 * i + 1),
                Ipv4Addr::new(base[0], base[1], base[2], 4 * i + 2),
            );
            let [a, b, c] = DATA_SUBNET;
            let data = Ipv4Addr::new(a, b, c, 10 + i);
            let port = format!("h{i}");
            ip(&["netns", "add", &netns])?;
            network.hosts.push(Host {
                name: (*name).to_owned(),
                netns: netns.clone(),
                ctl,
                data,
                gateway,
                port: port.clone(),
                outside: outside.clone(),
            });
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;
            // Control link: `ctl` in the host, `outside` here.
            ip(&[
                "link", "add", "ctl", "netns", &netns, "type", "veth", "peer", "name", &outside,
            ])?;
            ip(&["addr", "add", &format!("{gateway}/30"), "dev", &outside])?;
            ip(&["link", "set", &outside, "up"])?;
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{ctl}/30"),
                "dev",
                "ctl",
            ])?;
            ip(&["-n", &netns, "link", "set", "ctl", "up"])?;
            // Data link: `net` in the host, `port` on the switch's bridge.
            ip(&[
                "-n", &netns, "link", "add", "net", "type", "veth", "peer", "name", &port, "netns",
                &switch,
            ])?;
            ip(&["-n", &switch, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &switch, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{data}/24"),
                "dev",
                "net",
            ])?;
            ip(&["-n", &netns, "link", "set", "net", "up"])?;
        }
        drop(lock);
        Ok(network)
    }

    /// The host named `name`. Panics for a name not given to [`Network::create`].
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in this network"))
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Partitions `host` from every other host: its data link goes down (the control
    /// link stays up). Connections over it stall; nothing is told.
    pub fn cut(&self, host: &str) -> anyhow::Result<()> {
        let port = &self.host(host).port;
        ip(&["-n", &self.switch, "link", "set", port, "down"])
    }

    /// Ends a [`Network::cut`].
    pub fn heal(&self, host: &str) -> anyhow::Result<()> {
        let port = &self.host(host).port;
        ip(&["-n", &self.switch, "link", "set", port, "up"])
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // The test's ends of the control links first: deleting a veth is done when
        // `ip` returns, while a deleted namespace takes its veths down later, in the
        // kernel's own time.
        for host in &self.hosts {
            let _ = Command::new("ip")
                .args(["link", "del", &host.outside])
                .output();
        }
        // Deleting a namespace deletes its veths and their peers. A namespace in which
        // a process still runs lives on until that process exits.
        for netns in self
            .hosts
            .iter()
            .map(|h| h.netns.as_str())
            .chain([self.switch.as_str()])
        {
            if let Err(error) = ip(&["netns", "del", netns]) {
                eprintln!("harness: {error:#}");
            }
        }
    }
}

/// Fails with [`Unavailable`] when namespaces cannot be made here.
fn probe() -> anyhow::Result<()> {
    if !is_root() {
        return Err(Unavailable("the tests do not run as root".into()).into());
    }
    let probe = format!("{PREFIX}{}-probe", std::process::id());
    let made = Command::new("ip").args(["netns", "add", &probe]).output();
    match made {
        Ok(out) if out.status.success() => {
            ip(&["netns", "del", &probe])?;
            Ok(())
        }
        Ok(out) => Err(Unavailable(format!(
            "`ip netns add` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
        .into()),
        Err(error) => Err(Unavailable(format!("cannot run `ip`: {error}")).into()),
    }
}

/// Whether the effective user is root (the second field of `Uid:` in
/// `/proc/self/status`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
            .unwrap_or(false)
    })
}

/// Deletes namespaces of runs whose process has exited (`hz-<pid>-…`).
fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let list = String::from_utf8_lossy(&out.stdout);
    for netns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = netns
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("harness: deleting namespace {netns} left by an earlier run");
            let _ = ip(&["netns", "del", netns]);
        }
    }
}

/// A /24 in 10.0.0.0/8 that no address of this namespace is in.
fn free_control_block() -> anyhow::Result<[u8; 3]> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()?;
    let used = String::from_utf8_lossy(&out.stdout).into_owned();
    let out = Command::new("ip").args(["-4", "route", "show"]).output()?;
    let routes = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = std::process::id() as usize;
    for k in 0..(55 * 256) {
        let n = (start + k) % (55 * 256);
        let block = [10, 200 + (n / 256) as u8, (n % 256) as u8];
        let prefix = format!("10.{}.{}.", block[1], block[2]);
        if !used.contains(&format!(" {prefix}")) && !routes.contains(&prefix) {
            return Ok(block);
        }
    }
    bail!("no free /24 in 10.200.0.0-10.254.255.0 for control links")
}

/// Runs `ip args…`; an error quoting its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

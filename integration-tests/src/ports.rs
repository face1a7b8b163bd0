//! Loopback ports for servers, and retrying a start when another process took the port.
//!
//! `free_port` asks the kernel for an unused port, but the port is free only until someone
//! binds it: a parallel test (or another test process under nextest) may take it before
//! our server does. Within this process no port is handed out twice; across processes a
//! start that fails with "address already in use" is retried on new ports.

use std::collections::HashSet;
use std::future::Future;
use std::net::TcpListener;
use std::sync::Mutex;

/// How many times a start is attempted when its ports were taken.
const ATTEMPTS: usize = 5;

/// A port on 127.0.0.1 that was free a moment ago and was not handed out before by this
/// process.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("binding 127.0.0.1:0")
            .port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed_out.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// Marks an error as "a port was already in use" (see `ChildProcess::ensure_running`).
#[derive(Debug, Clone, Copy)]
pub struct PortInUse;

impl std::fmt::Display for PortInUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a port was already in use")
    }
}

/// Runs `start` (which picks fresh ports each time) again while it fails with `PortInUse`.
pub async fn retry_on_port_conflict<T, F, Fut>(mut start: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut attempt = 1;
    loop {
        match start().await {
            Err(error) if attempt < ATTEMPTS && error.downcast_ref::<PortInUse>().is_some() => {
                eprintln!("harness: a port was taken, starting again on other ports: {error:#}");
                attempt += 1;
            }
            result => return result,
        }
    }
}

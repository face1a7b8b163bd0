//! Readiness of the etcd behind the test API server.
//!
//! etcd answers `/health` before it has joined its one-member cluster, and a port reused
//! by another test's etcd would answer too; the member list names our member, which proves
//! both that it serves and that it is ours.

use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::process::ChildProcess;
use crate::timeout::eventually;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) async fn wait_ready(
    etcd: &mut ChildProcess,
    ip: Ipv4Addr,
    port: u16,
    name: &str,
) -> anyhow::Result<()> {
    let ready = eventually(READY_TIMEOUT, "etcd to serve clients", || {
        let running = etcd.ensure_running();
        async move {
            running?;
            let members = member_list(ip, port).await.unwrap_or_default();
            Ok(members
                .contains(&format!("\"name\":\"{name}\""))
                .then_some(()))
        }
    })
    .await;
    ready.map_err(|error| etcd.explain(error))
}

/// `POST /v3/cluster/member/list` through etcd's JSON gateway; the raw response text.
async fn member_list(ip: Ipv4Addr, port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect((ip, port)).await?;
    let body = "{}";
    let request = format!(
        "POST /v3/cluster/member/list HTTP/1.1\r\nHost: {ip}:{port}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

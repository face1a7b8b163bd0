//! The README's first command, end to end: `scripts/local up` serves the
//! examples, a change made with kubectl shows in the API, a second `up`
//! starts nothing new, and `down` leaves no process behind.

use std::path::Path;
use std::time::Duration;

use herald_integration_tests::local::LocalEnv;
use herald_integration_tests::timeout::eventually;
use serde_json::Value;

/// `kubectl annotate` of the `time` MCPServer with `annotation`, then waits until the
/// API's entry for it (`None` when absent) satisfies `served`.
async fn annotate_time_until(
    env: &LocalEnv,
    annotation: &[&str],
    what: &str,
    served: impl Fn(Option<&Value>) -> bool,
) -> anyhow::Result<()> {
    let mut args = vec!["annotate", "mcpserver", "time", "-n", "tools"];
    args.extend_from_slice(annotation);
    env.kubectl(&args).await?;
    eventually(Duration::from_secs(45), what, || async {
        let list = env.get("/v0.1/servers").await?;
        Ok(served(server(&list, "com.toolhive.k8s.tools/time")).then_some(()))
    })
    .await
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

fn server<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list["servers"]
        .as_array()?
        .iter()
        .find(|e| e["server"]["name"] == name)
        .map(|e| &e["server"])
}

#[tokio::test(flavor = "multi_thread")]
async fn up_serves_the_examples_follows_kubectl_and_down_stops_everything() -> anyhow::Result<()> {
    let env = LocalEnv::new()?;
    let printed = env.local(&["up"]).await?;
    assert!(
        printed.contains(&format!(
            "http://127.0.0.1:{}/v0.1/servers",
            env.port("API")
        )),
        "{printed}"
    );
    assert!(printed.contains("scripts/local down"), "{printed}");

    let default = env.get("/v0.1/servers").await?;
    for name in [
        "com.toolhive.k8s.tools/fetch",
        "com.toolhive.k8s.tools/time",
        "com.toolhive.k8s.tools/everything",
    ] {
        assert!(
            server(&default, name).is_some(),
            "{name} missing from {default:#}"
        );
    }
    assert!(
        server(&default, "com.toolhive.k8s.tools/internal-only").is_none(),
        "not opted in"
    );
    assert!(
        server(&default, "com.toolhive.k8s.tools/broken-description").is_none(),
        "rejected"
    );

    let engineering = env.get("/registry/engineering/v0.1/servers").await?;
    let github =
        server(&engineering, "io.github.github/github-mcp-server").expect("github in engineering");
    assert_eq!(
        github["remotes"].as_array().unwrap().len(),
        2,
        "two deployments, one entry: {github:#}"
    );
    assert_eq!(github["remotes"][0]["headers"][0]["name"], "Authorization");
    let docs = server(&engineering, "com.toolhive.k8s.knowledge/docs")
        .expect("the MCPServerEntry in engineering");
    assert_eq!(
        docs["remotes"][0]["url"],
        "https://mcp.docs.example.com/mcp"
    );
    assert_eq!(docs["remotes"][0]["headers"].as_array().unwrap().len(), 3);

    let before = env.pids();
    assert_eq!(before.len(), 6, "{before:?}");
    env.local(&["up"]).await?;
    assert_eq!(env.pids(), before, "a second up starts nothing new");

    annotate_time_until(
        &env,
        &[
            "--overwrite",
            "toolhive.stacklok.dev/registry-description=Changed with kubectl",
        ],
        "the new description in the API",
        |time| time.is_some_and(|s| s["description"] == "Changed with kubectl"),
    )
    .await?;
    annotate_time_until(
        &env,
        &["toolhive.stacklok.dev/registry-export-"],
        "the opted-out server gone from the API",
        |time| time.is_none(),
    )
    .await?;

    env.local(&["down"]).await?;
    for (part, pid) in &before {
        assert!(!alive(*pid), "{part} (pid {pid}) still runs after down");
    }
    assert!(env.pids().is_empty(), "pid files are removed");
    Ok(())
}

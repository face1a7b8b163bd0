//! The Kubernetes manifests in `deploy/kubernetes`: every overlay renders with
//! `kubectl kustomize`, every Deployment is probed, bounded and locked down, each
//! topology runs the binaries it should, and the watcher's RBAC is exactly what it
//! watches (the kinds in `herald_core::Kind::ALL`) plus events.k8s.io Events, and
//! nothing more.
//! The NATS samples in `deploy/nats` pass `nats-server -t` and agree with each other
//! and with the workload overlay.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use herald_core::ClusterId;
use herald_core::Kind;
use herald_core::object::TOOLHIVE_GROUP;
use herald_integration_tests::roles::without_tls;
use herald_integration_tests::tools::{Tools, workspace_root};
use serde::Deserialize as _;
use serde_json::Value;

const KUBECTL: &str = "/usr/bin/kubectl";
const NAMESPACE: &str = "herald";
const OVERLAYS: [&str; 3] = ["single-cluster", "hub", "workload"];
const WATCHER: &str = "herald-watcher";
const PROJECTOR: &str = "herald-projector";
const API: &str = "herald-api";

/// The objects `kubectl kustomize` renders for one overlay, as JSON values.
fn render(overlay: &str) -> Vec<Value> {
    assert!(
        Path::new(KUBECTL).exists(),
        "{KUBECTL} is missing: these tests render the kustomize overlays with `kubectl kustomize` \
         (install kubectl >= 1.27, which embeds kustomize v5)"
    );
    let dir = workspace_root()
        .join("deploy/kubernetes/overlays")
        .join(overlay);
    let out = Command::new(KUBECTL)
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("running {KUBECTL} kustomize {}: {e}", dir.display()));
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("kustomize output is UTF-8");
    let mut objects = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let yaml = serde_yaml_ng::Value::deserialize(doc)
            .unwrap_or_else(|e| panic!("overlay {overlay}: invalid YAML: {e}"));
        if yaml.is_null() {
            continue;
        }
        let json = serde_json::to_value(&yaml)
            .unwrap_or_else(|e| panic!("overlay {overlay}: object not representable as JSON: {e}"));
        objects.push(json);
    }
    assert!(!objects.is_empty(), "overlay {overlay} rendered nothing");
    objects
}

fn kind(obj: &Value) -> &str {
    obj["kind"].as_str().unwrap_or_default()
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

fn of_kind<'a>(objects: &'a [Value], k: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| kind(o) == k).collect()
}

fn named<'a>(objects: &'a [Value], k: &str, n: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| kind(o) == k && name(o) == n)
        .unwrap_or_else(|| panic!("no {k} named {n}"))
}

fn deployment_names(objects: &[Value]) -> BTreeSet<String> {
    of_kind(objects, "Deployment")
        .into_iter()
        .map(|d| name(d).to_owned())
        .collect()
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().expect("string in list").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The environment a container gets: its ConfigMaps (`envFrom`) overridden by `env`.
fn container_env(objects: &[Value], container: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for source in container["envFrom"].as_array().into_iter().flatten() {
        assert!(
            source.get("secretRef").is_none(),
            "configuration comes from ConfigMaps; secrets only as mounted files"
        );
        let cm_name = source["configMapRef"]["name"]
            .as_str()
            .expect("envFrom names a ConfigMap");
        let cm = named(objects, "ConfigMap", cm_name);
        for (k, v) in cm["data"].as_object().into_iter().flatten() {
            env.insert(k.clone(), v.as_str().expect("string value").to_owned());
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let key = var["name"].as_str().expect("env name").to_owned();
        assert!(
            var.get("valueFrom")
                .is_none_or(|f| f.get("secretKeyRef").is_none()),
            "{key}: secrets go in mounted files, not environment variables"
        );
        if let Some(v) = var["value"].as_str() {
            env.insert(key, v.to_owned());
        }
    }
    env
}

/// The container port a probe or Service names, as a number.
fn resolve_port(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let wanted = port.as_str().expect("port is a number or a name");
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"].as_str() == Some(wanted))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {wanted}"))
}

fn listen_port(addr: &str) -> u64 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} is not host:port"))
}

/// Checks one Deployment of one overlay; `what` prefixes every failure.
fn check_deployment(objects: &[Value], deployment: &Value, what: &str) {
    let pod = &deployment["spec"]["template"]["spec"];
    let pod_sc = &pod["securityContext"];
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{what}: one container");
    let c = &containers[0];
    let sc = &c["securityContext"];

    // Probes on the health endpoints, on the port the binary listens on.
    let env = container_env(objects, c);
    // Every binary, herald-api included, probes its health listener.
    let listen_var = "HERALD_HEALTH_LISTEN";
    let listen = env
        .get(listen_var)
        .unwrap_or_else(|| panic!("{what}: {listen_var} is not configured"));
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{what}: {probe} path");
        assert_eq!(
            resolve_port(c, &get["port"]),
            listen_port(listen),
            "{what}: {probe} is not on the port of {listen_var}={listen}"
        );
    }

    // Bounded resources.
    for bound in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                c["resources"][bound][res].is_string() || c["resources"][bound][res].is_number(),
                "{what}: resources.{bound}.{res} missing"
            );
        }
    }

    // Non-root, read-only, no privilege, no capabilities, default seccomp.
    let non_root = sc["runAsNonRoot"]
        .as_bool()
        .or(pod_sc["runAsNonRoot"].as_bool());
    assert_eq!(non_root, Some(true), "{what}: runAsNonRoot");
    assert_eq!(
        sc["readOnlyRootFilesystem"], true,
        "{what}: readOnlyRootFilesystem"
    );
    assert_eq!(
        sc["allowPrivilegeEscalation"], false,
        "{what}: allowPrivilegeEscalation"
    );
    assert!(
        !sc["privileged"].as_bool().unwrap_or(false),
        "{what}: privileged"
    );
    assert_eq!(
        str_list(&sc["capabilities"]["drop"]),
        vec!["ALL".to_owned()],
        "{what}: capabilities.drop"
    );
    assert!(
        sc["capabilities"]["add"].is_null(),
        "{what}: adds capabilities"
    );
    let seccomp = sc["seccompProfile"]["type"]
        .as_str()
        .or(pod_sc["seccompProfile"]["type"].as_str());
    assert_eq!(seccomp, Some("RuntimeDefault"), "{what}: seccompProfile");

    // An image pinned by the overlay's `images:`.
    let image = c["image"].as_str().expect("image");
    let expected_repo = format!("ghcr.io/herald/{}", name(deployment));
    let (repo, tag) = image
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{what}: image {image} has no tag"));
    assert_eq!(repo, expected_repo, "{what}: image");
    assert!(
        !tag.is_empty() && tag != "latest",
        "{what}: image tag {tag:?}"
    );

    // NATS credentials: a file from a Secret, named by HERALD_NATS_CREDS. No secret
    // values in the configuration.
    let creds = env
        .get("HERALD_NATS_CREDS")
        .unwrap_or_else(|| panic!("{what}: HERALD_NATS_CREDS is not configured"));
    let mount = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| {
            m["mountPath"]
                .as_str()
                .is_some_and(|p| Path::new(creds).starts_with(p))
        })
        .unwrap_or_else(|| panic!("{what}: nothing mounted at {creds}"));
    assert_eq!(
        mount["readOnly"], true,
        "{what}: credentials mount is read-only"
    );
    let volume = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .expect("mounted volume is declared");
    assert!(
        volume["secret"]["secretName"].is_string(),
        "{what}: {creds} does not come from a Secret"
    );
    for secret in ["HERALD_NATS_PASSWORD", "HERALD_NATS_TOKEN"] {
        assert!(
            !env.contains_key(secret),
            "{what}: {secret} in the manifests"
        );
    }
    assert!(
        env.contains_key("HERALD_NATS_URL"),
        "{what}: HERALD_NATS_URL"
    );

    // Its own ServiceAccount; only the watcher gets a Kubernetes API token.
    let sa_name = pod["serviceAccountName"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no serviceAccountName"));
    assert_eq!(sa_name, name(deployment), "{what}: ServiceAccount");
    named(objects, "ServiceAccount", sa_name);
    if name(deployment) != WATCHER {
        assert_eq!(
            pod["automountServiceAccountToken"], false,
            "{what}: needs no Kubernetes API token"
        );
    }
    if name(deployment) == WATCHER {
        let id = env
            .get("HERALD_CLUSTER_ID")
            .unwrap_or_else(|| panic!("{what}: HERALD_CLUSTER_ID is not configured"));
        id.parse::<ClusterId>()
            .unwrap_or_else(|e| panic!("{what}: HERALD_CLUSTER_ID: {e}"));
    }
}

#[test]
fn every_overlay_renders_hardened_deployments_of_the_right_binaries() {
    let expected: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("single-cluster", &[API, PROJECTOR, WATCHER][..]),
        ("hub", &[API, PROJECTOR][..]),
        ("workload", &[WATCHER][..]),
    ]);
    for overlay in OVERLAYS {
        let objects = render(overlay);
        let want: BTreeSet<String> = expected[overlay].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            deployment_names(&objects),
            want,
            "overlay {overlay}: Deployments"
        );

        for obj in &objects {
            assert_ne!(
                kind(obj),
                "Secret",
                "overlay {overlay}: secrets are created out of band"
            );
            let is_cluster_scoped = matches!(
                kind(obj),
                "Namespace" | "ClusterRole" | "ClusterRoleBinding"
            );
            if !is_cluster_scoped {
                assert_eq!(
                    obj["metadata"]["namespace"],
                    NAMESPACE,
                    "overlay {overlay}: {} {} namespace",
                    kind(obj),
                    name(obj)
                );
            }
        }
        for deployment in of_kind(&objects, "Deployment") {
            let what = format!("overlay {overlay}, Deployment {}", name(deployment));
            check_deployment(&objects, deployment, &what);
        }

        // The API's Service: http on 8080, selecting the API pods.
        if want.contains(API) {
            let svc = named(&objects, "Service", API);
            let ports = svc["spec"]["ports"].as_array().expect("ports");
            assert!(
                ports
                    .iter()
                    .any(|p| p["name"] == "http" && p["port"] == 8080),
                "overlay {overlay}: Service {API} exposes http 8080"
            );
            assert_eq!(svc["spec"]["selector"]["app.kubernetes.io/name"], API);
        }
        // Metrics Services for the binaries that serve no other traffic.
        for bin in [WATCHER, PROJECTOR] {
            if want.contains(bin) {
                let svc = named(&objects, "Service", &format!("{bin}-metrics"));
                assert_eq!(svc["spec"]["selector"]["app.kubernetes.io/name"], bin);
            }
        }
    }
}

/// (apiGroup, resource, verb) triples a set of RBAC rules grants.
fn grants(rules: &[Value], what: &str) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        assert!(
            rule.get("nonResourceURLs").is_none() && rule.get("resourceNames").is_none(),
            "{what}: unexpected rule {rule}"
        );
        for group in str_list(&rule["apiGroups"]) {
            for resource in str_list(&rule["resources"]) {
                for verb in str_list(&rule["verbs"]) {
                    out.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    out
}

#[test]
fn the_watcher_rbac_covers_exactly_what_it_watches() {
    let mut expected = BTreeSet::new();
    for kind in Kind::ALL {
        for verb in ["get", "list", "watch"] {
            expected.insert((
                TOOLHIVE_GROUP.to_owned(),
                kind.plural().to_owned(),
                verb.to_owned(),
            ));
        }
    }
    // CRD metadata: a ToolHive kind installed later is watched within seconds.
    for verb in ["get", "list", "watch"] {
        expected.insert((
            "apiextensions.k8s.io".to_owned(),
            "customresourcedefinitions".to_owned(),
            verb.to_owned(),
        ));
    }
    // kube-runtime's recorder writes events.k8s.io Events only.
    for verb in ["create", "patch"] {
        expected.insert((
            "events.k8s.io".to_owned(),
            "events".to_owned(),
            verb.to_owned(),
        ));
    }

    for overlay in OVERLAYS {
        let objects = render(overlay);
        let has_watcher = deployment_names(&objects).contains(WATCHER);

        // No namespaced RBAC at all, and no ClusterRole but the watcher's.
        for k in ["Role", "RoleBinding"] {
            assert!(of_kind(&objects, k).is_empty(), "overlay {overlay}: a {k}");
        }
        let roles: Vec<&str> = of_kind(&objects, "ClusterRole")
            .into_iter()
            .map(name)
            .collect();
        let bindings: Vec<&str> = of_kind(&objects, "ClusterRoleBinding")
            .into_iter()
            .map(name)
            .collect();
        if !has_watcher {
            assert!(
                roles.is_empty() && bindings.is_empty(),
                "overlay {overlay}: RBAC without a watcher: {roles:?} {bindings:?}"
            );
            continue;
        }
        assert_eq!(roles, [WATCHER], "overlay {overlay}: ClusterRoles");
        assert_eq!(
            bindings,
            [WATCHER],
            "overlay {overlay}: ClusterRoleBindings"
        );

        let role = named(&objects, "ClusterRole", WATCHER);
        assert!(
            role.get("aggregationRule").is_none(),
            "overlay {overlay}: the watcher's ClusterRole must not aggregate others"
        );
        let what = format!("overlay {overlay}, ClusterRole {WATCHER}");
        let rules = role["rules"].as_array().expect("rules");
        let granted = grants(rules, &what);
        let missing: Vec<_> = expected.difference(&granted).collect();
        let extra: Vec<_> = granted.difference(&expected).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{what}: missing {missing:?}, more than needed {extra:?}"
        );

        // Bound to the ServiceAccount the watcher runs as, in its namespace.
        let binding = named(&objects, "ClusterRoleBinding", WATCHER);
        assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
        assert_eq!(binding["roleRef"]["name"], WATCHER);
        let subjects = binding["subjects"].as_array().expect("subjects");
        assert_eq!(subjects.len(), 1, "overlay {overlay}: one subject");
        assert_eq!(subjects[0]["kind"], "ServiceAccount");
        assert_eq!(subjects[0]["name"], WATCHER);
        assert_eq!(subjects[0]["namespace"], NAMESPACE);
        let deployment = named(&objects, "Deployment", WATCHER);
        assert_eq!(
            deployment["spec"]["template"]["spec"]["serviceAccountName"],
            WATCHER
        );
    }
}

/// A well-formed nkey user seed (all-zero key material) for the leaf's remote: the
/// server checks the seed's encoding when it tests a configuration.
fn throwaway_user_seed() -> String {
    const SEED: u8 = 18 << 3;
    const USER: u8 = 20 << 3;
    let mut raw = vec![SEED | (USER >> 5), (USER & 31) << 3];
    raw.extend([0u8; 32]);
    let mut crc: u16 = 0;
    for byte in &raw {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    raw.extend(crc.to_le_bytes());
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in raw {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

#[test]
fn the_nats_samples_parse_and_agree_with_each_other_and_the_workload_overlay() {
    let nats_server = Tools::locate()
        .and_then(|t| t.nats_server())
        .unwrap_or_else(|e| panic!("{e:#}"));
    let src = workspace_root().join("deploy/nats");
    let dir = tempfile::tempdir().expect("temporary folder");
    let files = ["hub-cluster.conf", "leaf.conf", "permissions.conf"];
    let mut text = BTreeMap::new();
    for file in files {
        let config = std::fs::read_to_string(src.join(file))
            .unwrap_or_else(|e| panic!("reading deploy/nats/{file}: {e}"));
        std::fs::write(dir.path().join(file), without_tls(&config)).expect("writing a copy");
        text.insert(file, config);
    }
    for file in files {
        let out = Command::new(&nats_server)
            .arg("-c")
            .arg(dir.path().join(file))
            .arg("-t")
            .env("HERALD_LEAF_NKEY_SEED", throwaway_user_seed())
            .output()
            .expect("running nats-server -t");
        assert!(
            out.status.success(),
            "deploy/nats/{file} (without its tls blocks) is not a valid configuration: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The workload overlay's cluster may publish its own events, on the hub and on its leaf.
    let objects = render("workload");
    let deployment = named(&objects, "Deployment", WATCHER);
    let env = container_env(
        &objects,
        &deployment["spec"]["template"]["spec"]["containers"][0],
    );
    let cluster = &env["HERALD_CLUSTER_ID"];
    let own_events = format!("\"{}.{cluster}.>\"", herald_core::names::EVENTS_PREFIX);
    for file in ["permissions.conf", "leaf.conf"] {
        assert!(
            text[file].contains(&own_events),
            "deploy/nats/{file} does not let cluster {cluster} publish {own_events}"
        );
    }

    // The leaf maps the JetStream API to the hub's domain, and the cluster users may ask
    // for the stream there.
    let domain = text["hub-cluster.conf"]
        .lines()
        .find_map(|l| l.trim().strip_prefix("domain:"))
        .map(str::trim)
        .expect("hub-cluster.conf sets a JetStream domain");
    let mapping = format!("\"$JS.API.>\": \"$JS.{domain}.API.>\"");
    assert!(
        text["leaf.conf"].contains(&mapping),
        "leaf.conf does not map {mapping}"
    );
    let info = format!(
        "\"$JS.{domain}.API.STREAM.INFO.{}\"",
        herald_core::names::STREAM
    );
    for file in ["permissions.conf", "leaf.conf"] {
        assert!(
            text[file].contains(&info),
            "deploy/nats/{file} lacks {info}"
        );
    }
}

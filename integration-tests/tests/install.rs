//! Installing Herald the way platform teams install controllers, checked with the real
//! tools (installed by `scripts/test-deps`):
//! - the Helm chart `deploy/helm/herald`: `helm lint --strict` and `helm template` of
//!   each role (`ci/<role>-values.yaml`), every rendered object valid against the
//!   Kubernetes schemas (`kubernetes-validate --strict`), hardened, probed and bounded
//!   Deployments, disruption budgets, spreading and NetworkPolicies, read-only RBAC,
//!   secrets only as mounted files, values refused by `values.schema.json`, and the
//!   same essential objects as the kustomize overlays;
//! - the alerts (`deploy/helm/herald/files/prometheus-rules.yaml`): `promtool check
//!   rules` and `promtool test rules` (deploy/monitoring/prometheus-rules.test.yaml);
//! - real scrapes of every binary pass `promtool check metrics` (the Prometheus text
//!   format, what a scraper without an `Accept` header gets), Prometheus' own `Accept`
//!   gets OpenMetrics with the same families, and both carry `herald_build_info` and
//!   `process_*`;
//! - the Containerfile passes `hadolint`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use herald_integration_tests::dir::TestDir;
use herald_integration_tests::herald::Herald;
use herald_integration_tests::ports::free_port;
use herald_integration_tests::stack::Stack;
use herald_integration_tests::timeout::eventually;
use herald_integration_tests::tools::{Tools, workspace_root};
use serde::Deserialize as _;
use serde_json::Value;

const ROLES: [&str; 3] = ["single-cluster", "hub", "workload"];
const RELEASE: &str = "herald";
const NAMESPACE: &str = "herald";
/// The oldest Kubernetes the chart supports that kubernetes-validate knows well.
const KUBE_VERSION: &str = "1.32.0";

fn tools() -> Tools {
    Tools::locate().expect("scripts/test-deps installs the tools")
}

fn chart() -> PathBuf {
    workspace_root().join("deploy/helm/herald")
}

/// Runs a tool, `stdin` fed to it when given.
fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin piped");
        pipe.write_all(input.as_bytes()).expect("writing stdin");
    }
    child.wait_with_output().expect("waiting for the tool")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Helm with private homes, so that nothing of the user's Helm setup takes part.
struct Helm {
    bin: PathBuf,
    home: TestDir,
}

impl Helm {
    fn new() -> Self {
        Self {
            bin: tools().helm().expect("helm"),
            home: TestDir::new("helm-home").expect("a folder for helm's homes"),
        }
    }

    fn command(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.bin);
        for (var, sub) in [
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_DATA_HOME", "data"),
        ] {
            cmd.env(var, self.home.path().join(sub));
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running helm")
    }

    /// `helm template` of the chart with `args` (values files, `--set`).
    fn template(&self, args: &[&str]) -> Output {
        let chart = chart();
        let mut all = vec![
            "template",
            RELEASE,
            chart.to_str().expect("UTF-8 path"),
            "--namespace",
            NAMESPACE,
        ];
        all.extend_from_slice(args);
        self.command(&all)
    }

    /// The objects a role's CI values render, with extra `args`.
    fn render(&self, role: &str, args: &[&str]) -> (String, Vec<Value>) {
        let values = role_values(role);
        let mut all = vec!["-f", values.to_str().expect("UTF-8 path")];
        all.extend_from_slice(args);
        let out = self.template(&all);
        assert!(
            out.status.success(),
            "helm template ({role}): {}",
            text(&out)
        );
        let yaml = String::from_utf8(out.stdout).expect("UTF-8");
        let objects = parse(&yaml);
        (yaml, objects)
    }
}

fn role_values(role: &str) -> PathBuf {
    chart().join("ci").join(format!("{role}-values.yaml"))
}

fn parse(yaml: &str) -> Vec<Value> {
    let mut objects = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value = serde_yaml_ng::Value::deserialize(doc).expect("rendered YAML parses");
        if value.is_null() {
            continue;
        }
        objects.push(serde_json::to_value(&value).expect("representable as JSON"));
    }
    objects
}

fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or_default()
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

fn of_kind<'a>(objects: &'a [Value], k: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| kind(o) == k).collect()
}

fn names(objects: &[Value], k: &str) -> BTreeSet<String> {
    of_kind(objects, k)
        .into_iter()
        .map(|o| name(o).to_owned())
        .collect()
}

fn env_of(container: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let key = var["name"].as_str().expect("env name").to_owned();
        assert!(
            var.get("valueFrom")
                .is_none_or(|f| f.get("secretKeyRef").is_none()),
            "{key}: secrets go in mounted files, never in environment variables"
        );
        env.insert(key, var["value"].as_str().unwrap_or_default().to_owned());
    }
    env
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} is not host:port"))
}

fn container_port(container: &Value, port_name: &str) -> u64 {
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == port_name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {port_name}"))
}

/// The components each role runs by default (the CI values add the importer to the hub).
fn expected_deployments(role: &str) -> BTreeSet<String> {
    let list: &[&str] = match role {
        "single-cluster" => &["herald-watcher", "herald-projector", "herald-api"],
        "hub" => &["herald-projector", "herald-api", "herald-catalog"],
        "workload" => &["herald-watcher"],
        _ => unreachable!(),
    };
    list.iter().map(|s| (*s).to_owned()).collect()
}

// ------------------------------------------------------------------ the Helm chart

#[test]
fn the_chart_lints_and_every_role_renders_objects_valid_against_the_kubernetes_schemas() {
    let helm = Helm::new();
    let validate = tools().kubernetes_validate().expect("kubernetes-validate");
    let chart = chart();
    for role in ROLES {
        let values = role_values(role);
        let lint = helm.command(&[
            "lint",
            "--strict",
            chart.to_str().unwrap(),
            "-f",
            values.to_str().unwrap(),
        ]);
        assert!(lint.status.success(), "helm lint ({role}): {}", text(&lint));

        let (yaml, objects) = helm.render(role, &[]);
        assert_eq!(
            names(&objects, "Deployment"),
            expected_deployments(role),
            "{role}: the Deployments of the role"
        );
        let out = run(
            &validate,
            &["--strict", "-k", KUBE_VERSION, "-"],
            Some(&yaml),
        );
        let report = text(&out);
        assert!(
            out.status.success(),
            "kubernetes-validate ({role}): {report}"
        );
        // Unknown kinds are only a warning to kubernetes-validate: allow exactly the
        // Prometheus operator's (their content is checked by promtool and below).
        for line in report.lines().filter(|l| l.starts_with("WARN")) {
            assert!(
                line.contains("monitoring.coreos.com/v1"),
                "{role}: an object no schema checked: {line}"
            );
        }
        let checked = report.lines().filter(|l| l.starts_with("INFO")).count();
        let monitors = objects
            .iter()
            .filter(|o| o["apiVersion"] == "monitoring.coreos.com/v1")
            .count();
        assert_eq!(
            checked + monitors,
            objects.len(),
            "{role}: every object is checked: {report}"
        );
    }
}

#[test]
fn every_deployment_is_hardened_probed_bounded_and_takes_secrets_as_files() {
    let helm = Helm::new();
    for role in ROLES {
        let (_, objects) = helm.render(role, &[]);
        assert!(
            of_kind(&objects, "Secret").is_empty(),
            "{role}: the chart never carries a Secret; it mounts the ones you create"
        );
        for d in of_kind(&objects, "Deployment") {
            let what = format!("{role}/{}", name(d));
            let pod = &d["spec"]["template"]["spec"];
            let psc = &pod["securityContext"];
            assert_eq!(psc["runAsNonRoot"], true, "{what}");
            assert_eq!(psc["runAsUser"], 65532, "{what}");
            assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{what}");
            let token = name(d) == "herald-watcher";
            assert_eq!(
                pod["automountServiceAccountToken"], token,
                "{what}: only the watcher reads the Kubernetes API"
            );
            let containers = pod["containers"].as_array().expect("containers");
            assert_eq!(containers.len(), 1, "{what}");
            let c = &containers[0];
            let sc = &c["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{what}"
            );
            assert!(
                sc["capabilities"].get("add").is_none(),
                "{what}: no capability added"
            );
            for bound in ["requests", "limits"] {
                for res in ["cpu", "memory"] {
                    assert!(
                        !c["resources"][bound][res].is_null(),
                        "{what}: resources.{bound}.{res}"
                    );
                }
            }
            // Probes on the health listener.
            let env = env_of(c);
            let health = env
                .get("HERALD_HEALTH_LISTEN")
                .unwrap_or_else(|| panic!("{what}: HERALD_HEALTH_LISTEN"));
            assert_eq!(container_port(c, "health"), port_of(health), "{what}");
            for (probe, path) in [
                ("startupProbe", "/healthz"),
                ("livenessProbe", "/healthz"),
                ("readinessProbe", "/readyz"),
            ] {
                assert_eq!(c[probe]["httpGet"]["path"], path, "{what}: {probe}");
                assert_eq!(c[probe]["httpGet"]["port"], "health", "{what}: {probe}");
            }
            // Every file the environment names is on a mounted volume.
            let mounts: Vec<&str> = c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["mountPath"].as_str())
                .collect();
            for var in [
                "HERALD_NATS_CREDS",
                "HERALD_NATS_NKEY",
                "HERALD_SIGNING_KEY_FILE",
                "HERALD_TRUST_FILE",
            ] {
                if let Some(file) = env.get(var) {
                    assert!(
                        mounts.iter().any(|m| file.starts_with(&format!("{m}/"))),
                        "{what}: {var}={file} is on no mounted volume ({mounts:?})"
                    );
                }
            }
            for v in pod["volumes"].as_array().into_iter().flatten() {
                if let Some(mode) = v["secret"]["defaultMode"].as_u64() {
                    assert_eq!(mode & 0o007, 0, "{what}: a Secret readable by others");
                }
            }
        }
    }
    // The workload's watcher authenticates with an nkey seed and signs its events.
    let (_, objects) = helm.render("workload", &[]);
    let watcher = of_kind(&objects, "Deployment")[0];
    let env = env_of(&watcher["spec"]["template"]["spec"]["containers"][0]);
    assert_eq!(env["HERALD_NATS_NKEY"], "/etc/herald/nats/seed");
    assert_eq!(env["HERALD_SIGNING_KEY_FILE"], "/etc/herald/signing/seed");
    assert_eq!(env["HERALD_NAMESPACES"], "team-a,team-b");
    assert_eq!(env["HERALD_GRANT_NAME"], "io.example.team-a/*=team-a");
}

#[test]
fn the_api_and_the_hub_projector_get_budgets_spreading_and_every_component_a_network_policy() {
    let helm = Helm::new();
    let (_, objects) = helm.render("hub", &[]);
    let pdbs = names(&objects, "PodDisruptionBudget");
    assert_eq!(
        pdbs,
        BTreeSet::from(["herald-api".to_owned(), "herald-projector".to_owned()])
    );
    for d in of_kind(&objects, "Deployment") {
        let replicas = d["spec"]["replicas"].as_u64().unwrap_or(1);
        if replicas > 1 {
            let spread = &d["spec"]["template"]["spec"]["topologySpreadConstraints"];
            let keys: BTreeSet<&str> = spread
                .as_array()
                .unwrap_or_else(|| panic!("{}: no topologySpreadConstraints", name(d)))
                .iter()
                .filter_map(|c| c["topologyKey"].as_str())
                .collect();
            assert!(keys.contains("kubernetes.io/hostname"), "{}", name(d));
        }
    }
    // One NetworkPolicy per Deployment, selecting its pods, ingress and egress both.
    for role in ROLES {
        let (_, objects) = helm.render(role, &[]);
        let policies = of_kind(&objects, "NetworkPolicy");
        for d in of_kind(&objects, "Deployment") {
            let labels = &d["spec"]["selector"]["matchLabels"];
            let policy = policies
                .iter()
                .find(|p| &p["spec"]["podSelector"]["matchLabels"] == labels)
                .unwrap_or_else(|| panic!("{role}: no NetworkPolicy for {}", name(d)));
            assert_eq!(
                policy["spec"]["policyTypes"],
                serde_json::json!(["Ingress", "Egress"])
            );
            // Ingress only to the health port, and to the API's public port.
            let mut ports: Vec<u64> = policy["spec"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|r| r["ports"].as_array().cloned().unwrap_or_default())
                .filter_map(|p| p["port"].as_u64())
                .collect();
            ports.sort_unstable();
            let c = &d["spec"]["template"]["spec"]["containers"][0];
            let mut want = vec![container_port(c, "health")];
            if name(d) == "herald-api" {
                want.push(8080);
            }
            want.sort_unstable();
            assert_eq!(ports, want, "{role}: {} ingress ports", name(d));
        }
        // The API's public Service never exposes the metrics port.
        if let Some(svc) = of_kind(&objects, "Service")
            .into_iter()
            .find(|s| name(s) == "herald-api")
        {
            let ports: Vec<&str> = svc["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| p["targetPort"].as_str())
                .collect();
            assert_eq!(ports, ["http"], "{role}: the public Service");
        }
    }
    // The Ingress goes to the public port only; SSE is not buffered.
    let ingress = of_kind(&objects, "Ingress")[0];
    let backend = &ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"];
    assert_eq!(backend["name"], "herald-api");
    assert_eq!(backend["port"]["name"], "http");
    assert_eq!(
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffering"],
        "off"
    );
}

#[test]
fn the_watcher_rbac_reads_toolhive_kinds_and_crds_and_writes_events_only_namespaced_when_asked() {
    let helm = Helm::new();
    let mut expected = BTreeSet::new();
    for kind in herald_core::Kind::ALL {
        for verb in ["get", "list", "watch"] {
            expected.insert((
                herald_core::object::TOOLHIVE_GROUP.to_owned(),
                kind.plural().to_owned(),
                verb.to_owned(),
            ));
        }
    }
    for verb in ["create", "patch"] {
        expected.insert((
            "events.k8s.io".to_owned(),
            "events".to_owned(),
            verb.to_owned(),
        ));
    }
    let grants = |role: &Value| {
        let mut out = BTreeSet::new();
        for rule in role["rules"].as_array().expect("rules") {
            for g in rule["apiGroups"].as_array().unwrap() {
                for r in rule["resources"].as_array().unwrap() {
                    for v in rule["verbs"].as_array().unwrap() {
                        out.insert((
                            g.as_str().unwrap().to_owned(),
                            r.as_str().unwrap().to_owned(),
                            v.as_str().unwrap().to_owned(),
                        ));
                    }
                }
            }
        }
        out
    };

    // Cluster-wide, CRD metadata too (a kind installed later is watched within seconds).
    let mut cluster_wide = expected.clone();
    for verb in ["get", "list", "watch"] {
        cluster_wide.insert((
            "apiextensions.k8s.io".to_owned(),
            "customresourcedefinitions".to_owned(),
            verb.to_owned(),
        ));
    }
    let (_, objects) = helm.render("single-cluster", &[]);
    let cluster_roles = of_kind(&objects, "ClusterRole");
    assert_eq!(cluster_roles.len(), 1);
    assert_eq!(grants(cluster_roles[0]), cluster_wide);
    assert!(of_kind(&objects, "Role").is_empty());
    let binding = of_kind(&objects, "ClusterRoleBinding")[0];
    assert_eq!(binding["subjects"][0]["name"], "herald-watcher");
    assert_eq!(binding["subjects"][0]["namespace"], NAMESPACE);

    // With namespaces: a Role and RoleBinding in each, nothing cluster-wide.
    let (_, objects) = helm.render("workload", &[]);
    assert!(of_kind(&objects, "ClusterRole").is_empty());
    assert!(of_kind(&objects, "ClusterRoleBinding").is_empty());
    let roles = of_kind(&objects, "Role");
    let in_ns: BTreeSet<&str> = roles
        .iter()
        .map(|r| r["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(in_ns, BTreeSet::from(["team-a", "team-b"]));
    for r in roles {
        assert_eq!(grants(r), expected);
    }
    assert_eq!(of_kind(&objects, "RoleBinding").len(), 2);

    // The hub watches nothing: no RBAC at all.
    let (_, objects) = helm.render("hub", &[]);
    for k in ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"] {
        assert!(of_kind(&objects, k).is_empty(), "hub: a {k}");
    }
}

#[test]
fn the_values_schema_and_the_templates_refuse_bad_values() {
    let helm = Helm::new();
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "role=bogus"], "role"),
        (&["--set", "api.replicas=two"], "replicas"),
        (&["--set", "watcher.env.FOO=1"], "FOO"),
        (&["--set", "watcher.clusterId=Not_A_Label"], "clusterId"),
        (&["--set", "nats.url=http://nats:4222"], "url"),
        (&["--set", "catalog.url=http://insecure.example"], "url"),
        (&["--set", "watcher.natsAuth.type=password"], "type"),
        (&["--set", "surprise=1"], "surprise"),
        (&["--set", "watcher.clusterId="], "clusterId"),
        (&["--set", "api.auth.issuer="], "api.auth.issuer"),
        (&["--set", "api.auth.mode=open"], "mode"),
        (
            &[
                "--set",
                "watcher.clusterId=a",
                "--set",
                "catalog.enabled=true",
            ],
            "catalog",
        ),
    ];
    let single = role_values("single-cluster");
    for (args, field) in cases {
        let mut all = vec!["-f", single.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = helm.template(&all);
        let said = text(&out);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            said.contains(field),
            "{args:?}: the error names {field}: {said}"
        );
    }
    // And a good override renders.
    let out = helm.template(&[
        "-f",
        single.to_str().unwrap(),
        "--set",
        "watcher.env.HERALD_HEARTBEAT_INTERVAL=15s",
    ]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn the_api_auth_config_becomes_a_mounted_file_herald_api_accepts() {
    let helm = Helm::new();
    let config = r#"api.auth.config={"providers":[{"issuer":"https://dex.example","audience":"herald"}],"registries":{"team-a":{"claims":{"groups":["team-a"]},"unclaimedEntries":"visible"},"*":{"claims":{"groups":"readers"}}}}"#;
    // Providers in the file stand in for api.auth.issuer and audience.
    let (_, objects) = helm.render(
        "single-cluster",
        &[
            "--set",
            "api.auth.issuer=",
            "--set",
            "api.auth.audience=",
            "--set-json",
            config,
        ],
    );
    let map = of_kind(&objects, "ConfigMap")
        .into_iter()
        .find(|c| name(c) == "herald-api-auth")
        .expect("the auth ConfigMap");
    let file = map["data"]["auth.yaml"].as_str().unwrap();
    let parsed = herald_api::auth_config::AuthConfig::parse(file).expect("herald-api reads it");
    assert_eq!(parsed.providers.len(), 1);
    assert_eq!(parsed.policies.len(), 2);
    let api = of_kind(&objects, "Deployment")
        .into_iter()
        .find(|d| name(d) == "herald-api")
        .unwrap();
    let pod = &api["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let env = env_of(container);
    assert_eq!(env["HERALD_AUTH_CONFIG"], "/etc/herald/auth/auth.yaml");
    assert!(!env.contains_key("HERALD_OIDC_ISSUER"));
    assert!(
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == "/etc/herald/auth" && m["readOnly"] == true)
    );
    assert!(
        pod["metadata"]["annotations"]["checksum/auth-config"].is_string(),
        "a changed config must roll the pods"
    );
    // Without providers, oauth still needs an issuer; a bad policy value is refused.
    for (args, field) in [
        (
            vec![
                "--set",
                "api.auth.issuer=",
                "--set-json",
                r#"api.auth.config={"registries":{"a":{}}}"#,
            ],
            "api.auth.issuer",
        ),
        (
            vec![
                "--set-json",
                r#"api.auth.config={"registries":{"a":{"unclaimedEntries":"maybe"}}}"#,
            ],
            "unclaimedEntries",
        ),
    ] {
        let single = role_values("single-cluster");
        let mut all = vec!["-f", single.to_str().unwrap()];
        all.extend_from_slice(&args);
        let out = helm.template(&all);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(text(&out).contains(field), "{args:?}: {}", text(&out));
    }
}

#[test]
fn openshift_values_leave_user_and_group_ids_to_the_platform() {
    let helm = Helm::new();
    let (_, objects) = helm.render("single-cluster", &["--set", "openshift=true"]);
    for d in of_kind(&objects, "Deployment") {
        let psc = &d["spec"]["template"]["spec"]["securityContext"];
        for field in ["runAsUser", "runAsGroup", "fsGroup"] {
            assert!(psc.get(field).is_none(), "{}: {field} is set", name(d));
        }
        assert_eq!(psc["runAsNonRoot"], true);
    }
}

#[test]
fn the_image_is_pinned_by_digest_when_one_is_given() {
    let helm = Helm::new();
    let digest = format!("sha256:{}", "ab".repeat(32));
    let (_, objects) = helm.render(
        "single-cluster",
        &[
            "--set",
            &format!("api.image.digest={digest}"),
            "--set",
            "image.tag=9.9.9",
        ],
    );
    let image = |n: &str| {
        let d = of_kind(&objects, "Deployment")
            .into_iter()
            .find(|d| name(d) == n)
            .unwrap();
        d["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        image("herald-api"),
        format!("ghcr.io/herald/herald-api:9.9.9@{digest}")
    );
    assert_eq!(
        image("herald-watcher"),
        "ghcr.io/herald/herald-watcher:9.9.9"
    );
}

/// The kubectl that test-deps installs beside helm (its `kustomize` renders the
/// overlays), or the machine's.
fn kubectl() -> PathBuf {
    tools()
        .helm()
        .ok()
        .and_then(|h| Some(h.parent()?.parent()?.join("libexec/kubectl")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/kubectl"))
}

/// `kubectl kustomize` of a directory: the objects and the YAML.
fn kustomize_dir(dir: &Path) -> (String, Vec<Value>) {
    let out = run(&kubectl(), &["kustomize", dir.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "kustomize {}: {}",
        dir.display(),
        text(&out)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    let objects = parse(&yaml);
    (yaml, objects)
}

/// `kubectl kustomize` of an overlay.
fn kustomize(overlay: &str) -> Vec<Value> {
    kustomize_dir(
        &workspace_root()
            .join("deploy/kubernetes/overlays")
            .join(overlay),
    )
    .1
}

/// An overlay of `resources` (overlays) and `components`, written for the test under
/// the workspace's `target/` (kustomize takes only relative paths inside the tree).
fn kustomize_with(resources: &[&str], components: &[&str]) -> (String, Vec<Value>) {
    let target = workspace_root().join("target");
    std::fs::create_dir_all(&target).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("kustomize-")
        .tempdir_in(&target)
        .unwrap();
    let list = |items: &[&str], base: &str| -> String {
        items
            .iter()
            .map(|i| format!("  - ../../deploy/kubernetes/{base}/{i}\n"))
            .collect()
    };
    let text = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n{}components:\n{}",
        list(resources, "overlays"),
        list(components, "components")
    );
    std::fs::write(dir.path().join("kustomization.yaml"), text).unwrap();
    kustomize_dir(dir.path())
}

/// What must be the same in a chart's and an overlay's Deployment: image, arguments,
/// ports, hardening, spreading.
fn deployment_essentials(d: &Value) -> Value {
    let pod = &d["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let mut ports: Vec<(String, u64)> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    ports.sort();
    let spread: BTreeSet<&str> = pod["topologySpreadConstraints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["topologyKey"].as_str())
        .collect();
    serde_json::json!({
        "image": c["image"],
        "args": c["args"],
        "ports": ports,
        "securityContext": c["securityContext"],
        "automountServiceAccountToken": pod["automountServiceAccountToken"],
        "spread": spread,
    })
}

#[test]
fn the_chart_and_the_kustomize_overlays_render_the_same_essential_objects() {
    let helm = Helm::new();
    for role in ROLES {
        // The role alone, as the overlay has it (no importer, no namespaced RBAC); the
        // hub overlay runs two projectors.
        let replicas = if role == "hub" { "2" } else { "1" };
        let out = helm.template(&[
            "--set",
            &format!("role={role}"),
            "--set",
            "watcher.clusterId=main",
            "--set",
            &format!("projector.replicas={replicas}"),
            "--set",
            "api.auth.issuer=https://login.example.com",
            "--set",
            "api.auth.audience=herald",
        ]);
        assert!(out.status.success(), "{role}: {}", text(&out));
        let chart = parse(&String::from_utf8(out.stdout).unwrap());
        let overlay = kustomize(role);
        for k in [
            "Deployment",
            "Service",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "PodDisruptionBudget",
            "NetworkPolicy",
        ] {
            assert_eq!(
                names(&chart, k),
                names(&overlay, k),
                "{role}: the {k}s of the chart and of the overlay"
            );
        }
        for d in of_kind(&overlay, "Deployment") {
            let twin = of_kind(&chart, "Deployment")
                .into_iter()
                .find(|c| name(c) == name(d))
                .unwrap();
            assert_eq!(
                deployment_essentials(d),
                deployment_essentials(twin),
                "{role}: {}",
                name(d)
            );
            assert_eq!(
                d["spec"]["replicas"].as_u64().unwrap_or(1),
                twin["spec"]["replicas"].as_u64().unwrap_or(1),
                "{role}: {} replicas",
                name(d)
            );
        }
        for r in of_kind(&overlay, "ClusterRole") {
            let twin = of_kind(&chart, "ClusterRole")[0];
            assert_eq!(r["rules"], twin["rules"], "{role}: the watcher's rules");
        }
        // The same traffic allowed: ingress and egress rules alike (the pod selectors
        // differ only by the chart's instance label).
        for p in of_kind(&overlay, "NetworkPolicy") {
            let twin = of_kind(&chart, "NetworkPolicy")
                .into_iter()
                .find(|c| name(c) == name(p))
                .unwrap();
            for field in ["policyTypes", "ingress", "egress"] {
                assert_eq!(
                    p["spec"][field],
                    twin["spec"][field],
                    "{role}: NetworkPolicy {} {field}",
                    name(p)
                );
            }
        }
        for b in of_kind(&overlay, "PodDisruptionBudget") {
            let twin = of_kind(&chart, "PodDisruptionBudget")
                .into_iter()
                .find(|c| name(c) == name(b))
                .unwrap();
            assert_eq!(b["spec"]["minAvailable"], twin["spec"]["minAvailable"]);
        }
    }
}

#[test]
fn the_kustomize_components_match_the_chart_and_every_overlay_validates_offline() {
    let helm = Helm::new();
    let validate = tools().kubernetes_validate().expect("kubernetes-validate");
    let check = |what: &str, yaml: &str, objects: &[Value]| {
        let out = run(
            &validate,
            &["--strict", "-k", KUBE_VERSION, "-"],
            Some(yaml),
        );
        let report = text(&out);
        assert!(
            out.status.success(),
            "kubernetes-validate ({what}): {report}"
        );
        let checked = report.lines().filter(|l| l.starts_with("INFO")).count();
        let monitors = objects
            .iter()
            .filter(|o| o["apiVersion"] == "monitoring.coreos.com/v1")
            .count();
        assert_eq!(checked + monitors, objects.len(), "{what}: {report}");
    };
    for overlay in ROLES.iter().chain(&["single-cluster-namespaced"]) {
        let (yaml, objects) = kustomize_dir(
            &workspace_root()
                .join("deploy/kubernetes/overlays")
                .join(overlay),
        );
        check(overlay, &yaml, &objects);
    }

    // --namespaces: a Role and RoleBinding in the watched namespace instead of the
    // ClusterRole, with the same rules as the chart's, bound to the watcher's account.
    let overlay = kustomize("single-cluster-namespaced");
    let out = helm.template(&[
        "--set",
        "role=single-cluster",
        "--set",
        "watcher.clusterId=main",
        "--set",
        "watcher.namespaces={team-a}",
        "--set",
        "api.auth.issuer=https://login.example.com",
        "--set",
        "api.auth.audience=herald",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let chart = parse(&String::from_utf8(out.stdout).unwrap());
    for k in ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"] {
        assert_eq!(names(&chart, k), names(&overlay, k), "the {k}s");
        for o in of_kind(&overlay, k) {
            let twin = of_kind(&chart, k)
                .into_iter()
                .find(|c| name(c) == name(o))
                .unwrap();
            assert_eq!(o["metadata"]["namespace"], twin["metadata"]["namespace"]);
            assert_eq!(o["rules"], twin["rules"], "{k} rules");
            assert_eq!(o["subjects"], twin["subjects"], "{k} subjects");
        }
    }
    let watcher_env = |objects: &[Value]| -> String {
        let config = of_kind(objects, "ConfigMap")
            .into_iter()
            .find(|c| name(c).starts_with("herald-watcher"))
            .map(|c| {
                c["data"]["HERALD_NAMESPACES"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            });
        let d = of_kind(objects, "Deployment")
            .into_iter()
            .find(|d| name(d) == "herald-watcher")
            .unwrap();
        env_of(&d["spec"]["template"]["spec"]["containers"][0])
            .get("HERALD_NAMESPACES")
            .cloned()
            .or(config)
            .unwrap_or_default()
    };
    assert_eq!(watcher_env(&overlay), "team-a");
    assert_eq!(watcher_env(&chart), "team-a");

    // Monitoring: the chart's ServiceMonitors and PrometheusRule, and the rule is the
    // very rules file promtool tests (scripts/prometheus-rule writes the component's).
    let (yaml, monitored) = kustomize_with(&["hub"], &["monitoring"]);
    check("hub + monitoring", &yaml, &monitored);
    let (_, chart) = helm.render(
        "hub",
        &[
            "--set",
            "monitoring.serviceMonitor.enabled=true",
            "--set",
            "monitoring.prometheusRule.enabled=true",
        ],
    );
    let rules: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(chart_rules_file()).expect("the rules file"),
    )
    .unwrap();
    let rule = of_kind(&monitored, "PrometheusRule")[0];
    assert_eq!(
        rule["spec"], rules,
        "components/monitoring/prometheusrule.yaml differs from the rules file: run scripts/prometheus-rule"
    );
    assert_eq!(
        names(&chart, "PrometheusRule"),
        names(&monitored, "PrometheusRule")
    );
    assert_eq!(of_kind(&chart, "PrometheusRule")[0]["spec"], rules);
    for m in of_kind(&chart, "ServiceMonitor") {
        let twin = of_kind(&monitored, "ServiceMonitor")
            .into_iter()
            .find(|k| name(k) == name(m))
            .unwrap_or_else(|| panic!("no ServiceMonitor {} in the component", name(m)));
        assert_eq!(m["spec"]["endpoints"], twin["spec"]["endpoints"]);
        assert_eq!(m["spec"]["jobLabel"], twin["spec"]["jobLabel"]);
        // It selects the overlay's metrics Service of its component, when deployed.
        let selector = twin["spec"]["selector"]["matchLabels"].as_object().unwrap();
        let selected: Vec<&Value> = of_kind(&monitored, "Service")
            .into_iter()
            .filter(|s| {
                selector
                    .iter()
                    .all(|(k, v)| &s["metadata"]["labels"][k] == v)
                    && s["spec"]["ports"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["name"] == "metrics")
            })
            .collect();
        // The hub overlay has no importer: its monitor selects nothing there.
        let deployed = names(&monitored, "Deployment").contains(name(m));
        assert_eq!(
            selected.len(),
            usize::from(deployed),
            "{}: {selected:?}",
            name(m)
        );
    }
}

fn chart_rules_file() -> PathBuf {
    chart().join("files/prometheus-rules.yaml")
}

// ------------------------------------------------------------------ alerts

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = tools().promtool().expect("promtool");
    let rules = chart().join("files/prometheus-rules.yaml");
    let out = run(
        &promtool,
        &["check", "rules", rules.to_str().unwrap()],
        None,
    );
    assert!(out.status.success(), "promtool check rules: {}", text(&out));
    let tests = workspace_root().join("deploy/monitoring/prometheus-rules.test.yaml");
    let out = run(&promtool, &["test", "rules", tests.to_str().unwrap()], None);
    assert!(out.status.success(), "promtool test rules: {}", text(&out));

    // Every alert has a test, a summary, and a runbook section in docs/operations.md.
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    let tests_text = std::fs::read_to_string(&tests).unwrap();
    let runbook = std::fs::read_to_string(workspace_root().join("docs/operations.md")).unwrap();
    let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&rules_text).unwrap();
    let mut alerts = 0;
    for group in parsed["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let alert = rule["alert"].as_str().expect("only alerts");
            alerts += 1;
            assert!(
                tests_text.contains(&format!("alertname: {alert}\n")),
                "{alert} has no promtool test"
            );
            assert!(rule["annotations"]["summary"].is_string(), "{alert}");
            assert!(
                runbook.contains(&format!("### {alert}\n")),
                "{alert} has no runbook section (### {alert}) in docs/operations.md"
            );
        }
    }
    assert!(alerts >= 10, "{alerts} alerts");

    // The PrometheusRule the chart renders carries exactly this file.
    let helm = Helm::new();
    let (_, objects) = helm.render("single-cluster", &[]);
    let rule = of_kind(&objects, "PrometheusRule")[0];
    let file: Value = serde_json::to_value(&parsed).unwrap();
    assert_eq!(rule["spec"], file);
}

// ------------------------------------------------------------------ real scrapes

/// `promtool check metrics` of `body`; its findings when it complains.
fn check_metrics(promtool: &Path, body: &str) -> Result<(), String> {
    let out = run(promtool, &["check", "metrics"], Some(body));
    if out.status.success() {
        Ok(())
    } else {
        Err(text(&out))
    }
}

async fn scrape(url: &str, accept: Option<&str>) -> anyhow::Result<(String, String)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut req = http.get(url);
    if let Some(accept) = accept {
        req = req.header(reqwest::header::ACCEPT, accept);
    }
    let resp = req.send().await?.error_for_status()?;
    let ct = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((ct, resp.text().await?))
}

/// What Prometheus 2.5x sends.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

#[tokio::test(flavor = "multi_thread")]
async fn every_binary_serves_metrics_promtool_accepts_and_openmetrics_to_prometheus()
-> anyhow::Result<()> {
    let promtool = tools().promtool()?;
    let health_port = free_port();
    let health_flag = format!("127.0.0.1:{health_port}");
    let stack = Stack::builder("install-metrics")
        .api_flags(&["--health-listen", &health_flag])
        .projector_flags(&["--liveness-interval", "1s"])
        .build()
        .await?;
    let fixture = workspace_root().join("core/tests/fixtures/toolhive-registry.json");
    let catalog = Herald::catalog_sync(&stack.nats.url())
        .dir(stack.dir.path())
        .args([
            "--source-id",
            "toolhive",
            "--file",
            fixture.to_str().unwrap(),
            "--format",
            "toolhive",
            "--interval",
            "1h",
        ])
        .start()
        .await?;
    let api_metrics = format!("http://127.0.0.1:{health_port}/metrics");
    let targets = [
        (
            "herald-watcher",
            format!("{}/metrics", stack.watchers[0].base()),
        ),
        (
            "herald-projector",
            format!("{}/metrics", stack.projector.as_ref().unwrap().base()),
        ),
        ("herald-api", api_metrics.clone()),
        ("herald-catalog", format!("{}/metrics", catalog.base())),
    ];

    // The projector reads the watcher's heartbeat back from the clusters bucket.
    let projector = targets[1].1.clone();
    eventually(
        Duration::from_secs(60),
        "the projector reports cluster east's heartbeat",
        || {
            let url = projector.clone();
            async move {
                let (_, body) = scrape(&url, None).await?;
                Ok(body
                    .lines()
                    .any(|l| {
                        l.starts_with(
                            "herald_projector_cluster_last_heartbeat_timestamp_seconds{cluster=\"east\"} ",
                        )
                    })
                    .then_some(()))
            }
        },
    )
    .await?;

    for (binary, url) in &targets {
        // No Accept header (curl, promtool): the Prometheus text format.
        let (ct, text) = scrape(url, None).await?;
        assert!(
            ct.starts_with("text/plain; version=0.0.4"),
            "{binary}: {ct}"
        );
        check_metrics(&promtool, &text)
            .unwrap_or_else(|e| panic!("{binary}: promtool check metrics (text): {e}\n{text}"));
        assert!(
            text.contains("herald_build_info{version=\""),
            "{binary}: {text}"
        );
        assert!(text.contains("process_resident_memory_bytes "), "{binary}");
        assert!(text.contains("process_cpu_seconds_total "), "{binary}");
        assert!(!text.contains("# EOF"), "{binary}");
        // Prometheus asks for OpenMetrics and gets it.
        let (ct, om) = scrape(url, Some(PROMETHEUS_ACCEPT)).await?;
        assert!(
            ct.starts_with("application/openmetrics-text"),
            "{binary}: {ct}"
        );
        assert!(om.ends_with("# EOF\n"), "{binary}");
        // promtool parses only the Prometheus text format; OpenMetrics carries the same
        // families (`info` for the build info).
        let families = |body: &str, counter_suffix: &str| -> BTreeSet<String> {
            body.lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .map(|l| {
                    let mut words = l.split(' ');
                    let (name, ty) = (words.next().unwrap(), words.next().unwrap());
                    match ty {
                        "counter" => name.trim_end_matches(counter_suffix).to_owned(),
                        _ => name.trim_end_matches("_info").to_owned(),
                    }
                })
                .collect()
        };
        assert_eq!(families(&text, "_total"), families(&om, ""), "{binary}");
        assert!(om.contains("# TYPE herald_build info\n"), "{binary}");
    }

    // The heartbeat and last-success gauges are fresh.
    let now = chrono::Utc::now().timestamp() as f64;
    for (binary, url, series) in [
        (
            "herald-watcher",
            &targets[0].1,
            "herald_watcher_last_published_timestamp_seconds",
        ),
        (
            "herald-catalog",
            &targets[3].1,
            "herald_catalog_last_success_timestamp_seconds",
        ),
    ] {
        let (_, body) = scrape(url, None).await?;
        let value: f64 = body
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .with_context(|| format!("{binary}: no {series}"))?
            .trim()
            .parse()?;
        assert!(
            (now - 120.0..=now + 5.0).contains(&value),
            "{binary}: {series} = {value}, now {now}"
        );
    }

    // herald-api: /metrics only on the health listener; the probes on both.
    let public = stack.api().base();
    let http = reqwest::Client::new();
    let status = http.get(format!("{public}/metrics")).send().await?.status();
    assert_eq!(status, 404, "the public port serves no /metrics");
    for path in ["/healthz", "/readyz"] {
        for base in [public.to_owned(), format!("http://127.0.0.1:{health_port}")] {
            let status = http.get(format!("{base}{path}")).send().await?.status();
            assert_eq!(status, 200, "{base}{path}");
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ the image

#[test]
fn the_containerfile_passes_hadolint() {
    let hadolint = tools().hadolint().expect("hadolint");
    let file = workspace_root().join("Containerfile");
    let out = run(
        &hadolint,
        &[
            "--no-color",
            "--failure-threshold",
            "style",
            file.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "hadolint: {}", text(&out));
    // And it finds problems at all: an unpinned base and a root user.
    let bad = "FROM debian\nRUN apt-get update && apt-get install -y curl\n";
    let out = run(&hadolint, &["--no-color", "-"], Some(bad));
    assert!(!out.status.success(), "hadolint accepted {bad:?}");
}

// ------------------------------------------------------------------ the NATS chart

#[test]
fn the_nats_hub_values_render_with_the_official_chart_the_names_herald_uses() {
    let helm = Helm::new();
    let root = workspace_root();
    let chart = root.join("integration-tests/tests/data/nats-2.14.2.tgz");
    let values = root.join("deploy/nats/helm/hub-values.yaml");
    let permissions = root.join("deploy/nats/permissions.conf");
    let set_file = format!(
        "configMap.merge.data.permissions\\.conf={}",
        permissions.display()
    );
    let out = helm.command(&[
        "template",
        "nats",
        chart.to_str().unwrap(),
        "--namespace",
        "nats",
        "-f",
        values.to_str().unwrap(),
        "--set-file",
        &set_file,
        // `nats-server -t` loads TLS files; the leaf node TLS is checked by deploy.rs.
        "--set",
        "config.leafnodes.tls.enabled=false",
    ]);
    assert!(out.status.success(), "helm template nats: {}", text(&out));
    let yaml = String::from_utf8(out.stdout).unwrap();
    let objects = parse(&yaml);

    // The names Herald's chart, overlays and hub-cluster.conf use.
    let sts = of_kind(&objects, "StatefulSet")[0];
    assert_eq!(name(sts), "nats");
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(sts["spec"]["serviceName"], "nats-headless");
    let services = names(&objects, "Service");
    assert!(
        services.contains("nats") && services.contains("nats-headless"),
        "{services:?}"
    );
    let client_url = "nats://nats.nats.svc.cluster.local:4222";
    let defaults = std::fs::read_to_string(chart_values()).unwrap();
    assert!(
        defaults.contains(client_url),
        "the chart's nats.url default"
    );
    let hub =
        std::fs::read_to_string(root.join("deploy/kubernetes/overlays/hub/kustomization.yaml"))
            .unwrap();
    assert!(hub.contains(&format!("HERALD_NATS_URL={client_url}")));

    // The rendered configuration: the routes of hub-cluster.conf, and nats-server takes it.
    let config = of_kind(&objects, "ConfigMap")
        .into_iter()
        .find(|c| name(c) == "nats-config")
        .expect("ConfigMap nats-config");
    let dir = TestDir::new("nats-chart").unwrap();
    for (file, body) in config["data"].as_object().unwrap() {
        // Storage in the test folder instead of the volume.
        let body = body
            .as_str()
            .unwrap()
            .replace("\"/data", &format!("\"{}", dir.path().display()));
        std::fs::write(dir.path().join(file), body).unwrap();
    }
    let rendered = std::fs::read_to_string(dir.path().join("nats.conf")).unwrap();
    let sample = std::fs::read_to_string(root.join("deploy/nats/hub-cluster.conf")).unwrap();
    for i in 0..3 {
        let route = format!("nats://nats-{i}.nats-headless.nats.svc.cluster.local:6222");
        assert!(rendered.contains(&route), "the chart routes to {route}");
        assert!(
            sample.contains(&route),
            "hub-cluster.conf routes to {route}"
        );
    }
    assert!(rendered.contains("\"domain\": \"hub\""), "{rendered}");
    assert!(rendered.contains("include permissions.conf"), "{rendered}");
    // Dead links behind a silent partition are noticed as hub-cluster.conf says.
    assert!(sample.contains("ping_interval: \"5s\""));
    assert!(rendered.contains("\"ping_interval\": \"5s\""), "{rendered}");
    assert!(rendered.contains("\"ping_max\": 3"), "{rendered}");
    let nats_server = tools().nats_server().unwrap();
    let out = Command::new(nats_server)
        .args(["-t", "-c"])
        .arg(dir.path().join("nats.conf"))
        .env("SERVER_NAME", "nats-0")
        .env("POD_NAME", "nats-0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nats-server -t: {}\n{rendered}",
        text(&out)
    );
    // Every object is valid Kubernetes.
    let validate = tools().kubernetes_validate().unwrap();
    let out = run(
        &validate,
        &["--strict", "-k", KUBE_VERSION, "-"],
        Some(&yaml),
    );
    assert!(out.status.success(), "kubernetes-validate: {}", text(&out));
}

fn chart_values() -> PathBuf {
    chart().join("values.yaml")
}

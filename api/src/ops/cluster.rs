//! The program talks to the cluster through the Kubernetes API (`kube`):
//! `rag deploy` applies a rendered overlay with server-side apply and waits
//! for its rollouts, `rag status` reports them, and [`LeaseLock`] elects
//! the one replica that runs the scheduled re-sync.
//!
//! Tests run the same code against a fake API server behind the client's
//! tower service and assert the exact requests; `RAG_K8S_TEST=1` runs
//! `real_cluster` against the cluster of the current kubeconfig.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff;
use kube::Client;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde::Serialize;

/// The field manager of every server-side apply: what `kubectl` shows as
/// the owner of the fields this program sets.
pub const FIELD_MANAGER: &str = "rag";

/// Kinds that are not namespaced among those an overlay may hold.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "PersistentVolume",
    "StorageClass",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
];

pub fn is_cluster_scoped(kind: &str) -> bool {
    CLUSTER_SCOPED.contains(&kind)
}

/// Renders a kustomize folder with `kubectl kustomize` (kustomize has no
/// Rust implementation; `scripts/k8s-check.sh` installs kubectl from PyPI).
pub fn render(overlay: &Path, kubectl: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new(kubectl)
        .arg("kustomize")
        .arg(overlay)
        .output()
        .with_context(|| format!("running {kubectl} kustomize (set --kubectl to its path)"))?;
    anyhow::ensure!(
        out.status.success(),
        "{kubectl} kustomize {} failed: {}",
        overlay.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The objects of a multi-document YAML stream.
pub fn parse_objects(yaml: &str) -> anyhow::Result<Vec<DynamicObject>> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(yaml).context("the rendered manifests are not YAML")?;
    docs.into_iter()
        .filter(|d| !d.is_null())
        .map(|d| {
            let object: DynamicObject =
                serde_json::from_value(d).context("a manifest is not a Kubernetes object")?;
            anyhow::ensure!(
                object.types.is_some() && object.metadata.name.is_some(),
                "a manifest has no apiVersion, kind or name"
            );
            Ok(object)
        })
        .collect()
}

/// What an apply did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Created,
    Configured,
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    pub change: Change,
}

fn api_for(
    client: &Client,
    object: &DynamicObject,
    namespace: &str,
) -> anyhow::Result<(Api<DynamicObject>, ApiResource, Option<String>)> {
    let types = object
        .types
        .as_ref()
        .context("an object without apiVersion and kind")?;
    let gvk = GroupVersionKind::try_from(types)
        .with_context(|| format!("apiVersion {:?}", types.api_version))?;
    let resource = ApiResource::from_gvk(&gvk);
    if is_cluster_scoped(&gvk.kind) {
        return Ok((Api::all_with(client.clone(), &resource), resource, None));
    }
    let ns = object
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| namespace.to_string());
    Ok((
        Api::namespaced_with(client.clone(), &ns, &resource),
        resource,
        Some(ns),
    ))
}

/// Applies every object with server-side apply (forcing conflicts: this
/// program owns what it renders), in order, and says what changed.
pub async fn apply(
    client: &Client,
    objects: &[DynamicObject],
    namespace: &str,
) -> anyhow::Result<Vec<Applied>> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut applied = Vec::new();
    for object in objects {
        let (api, resource, ns) = api_for(client, object, namespace)?;
        let name = object.metadata.name.clone().unwrap_or_default();
        let mut object = object.clone();
        object.metadata.namespace = ns.clone();
        let before = api
            .get_opt(&name)
            .await
            .with_context(|| format!("reading {} {name}", resource.kind))?
            .and_then(|o| o.metadata.resource_version);
        let after = api
            .patch(&name, &params, &Patch::Apply(&object))
            .await
            .with_context(|| format!("applying {} {name}", resource.kind))?;
        let change = match before {
            None => Change::Created,
            Some(rv) if after.metadata.resource_version.as_deref() == Some(rv.as_str()) => {
                Change::Unchanged
            }
            Some(_) => Change::Configured,
        };
        applied.push(Applied {
            kind: resource.kind.clone(),
            name,
            namespace: ns,
            change,
        });
    }
    Ok(applied)
}

/// A workload's rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rollout {
    pub kind: String,
    pub name: String,
    pub desired: i32,
    pub ready: i32,
    pub updated: i32,
    pub done: bool,
}

fn deployment_rollout(d: &Deployment) -> Rollout {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = d.status.clone().unwrap_or_default();
    let observed = status.observed_generation >= d.metadata.generation;
    let ready = status.available_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    Rollout {
        kind: "Deployment".into(),
        name: d.metadata.name.clone().unwrap_or_default(),
        desired,
        ready,
        updated,
        done: observed && ready >= desired && updated >= desired,
    }
}

fn stateful_set_rollout(s: &StatefulSet) -> Rollout {
    let desired = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = s.status.clone().unwrap_or_default();
    let observed = status.observed_generation >= s.metadata.generation;
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    Rollout {
        kind: "StatefulSet".into(),
        name: s.metadata.name.clone().unwrap_or_default(),
        desired,
        ready,
        updated,
        done: observed
            && ready >= desired
            && updated >= desired
            && status.current_revision == status.update_revision,
    }
}

/// The rollouts of every Deployment and StatefulSet in `namespace`.
pub async fn status(client: &Client, namespace: &str) -> anyhow::Result<Vec<Rollout>> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let mut out: Vec<Rollout> = deployments
        .list(&Default::default())
        .await
        .context("listing Deployments")?
        .items
        .iter()
        .map(deployment_rollout)
        .collect();
    out.extend(
        sets.list(&Default::default())
            .await
            .context("listing StatefulSets")?
            .items
            .iter()
            .map(stateful_set_rollout),
    );
    Ok(out)
}

/// Polls the applied Deployments and StatefulSets until each has rolled
/// out or `timeout` has passed; returns their last state.
pub async fn wait_ready(
    client: &Client,
    applied: &[Applied],
    timeout: Duration,
    poll: Duration,
) -> anyhow::Result<Vec<Rollout>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut rollouts = Vec::new();
        for a in applied {
            let ns = a.namespace.as_deref().unwrap_or("default");
            let rollout = match a.kind.as_str() {
                "Deployment" => {
                    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
                    deployment_rollout(&api.get(&a.name).await?)
                }
                "StatefulSet" => {
                    let api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
                    stateful_set_rollout(&api.get(&a.name).await?)
                }
                _ => continue,
            };
            rollouts.push(rollout);
        }
        if rollouts.iter().all(|r| r.done) || tokio::time::Instant::now() + poll > deadline {
            return Ok(rollouts);
        }
        tokio::time::sleep(poll).await;
    }
}

/// Leader election on a `coordination.k8s.io/v1` Lease: one holder at a
/// time; the holder renews before `duration` runs out, anyone takes over
/// an expired Lease, and a holder that stops releases it (hand-over).
/// Every write carries the `resourceVersion` it read, so two replicas
/// racing for the same Lease cannot both win: the loser gets 409.
pub struct LeaseLock {
    api: Api<Lease>,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

impl LeaseLock {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    /// Takes or renews the Lease; true when this replica holds it now.
    pub async fn acquire_or_renew(&self) -> anyhow::Result<bool> {
        let seconds = self.duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let held_for = spec.lease_duration_seconds.unwrap_or(seconds).max(1) as i64;
        let expired = match &spec.renew_time {
            Some(MicroTime(renewed)) => {
                jiff::Timestamp::now().as_second() - renewed.as_second() > held_for
            }
            None => true,
        };
        let free = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        if !mine && !expired && !free {
            return Ok(false);
        }
        if !mine {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(now());
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Renews the Lease three times per `duration` for as long as it is
    /// held; returns why it no longer is (another replica took it over, or
    /// the API failed). Run it beside the work it guards and stop the work
    /// when it returns.
    pub async fn hold(&self) -> anyhow::Error {
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.acquire_or_renew().await {
                Ok(true) => {}
                Ok(false) => {
                    return anyhow::anyhow!(
                        "lost the Lease {} to another replica; stopped (the next run resumes)",
                        self.name
                    );
                }
                Err(e) => return e.context(format!("renewing the Lease {}", self.name)),
            }
        }
    }

    /// Gives the Lease up if this replica holds it, so that another takes
    /// over at once instead of after it expires.
    pub async fn release(&self) -> anyhow::Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use http_body_util::BodyExt;
    use serde_json::{Value, json};

    use super::*;

    /// One request as the fake API server saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path: String,
        query: String,
        content_type: String,
        body: Value,
    }

    /// A Kubernetes API server in memory: objects by path, resource
    /// versions, 404 and 409 as the real one answers them, and rollouts
    /// that finish after a number of reads.
    #[derive(Default)]
    struct FakeApi {
        objects: Mutex<HashMap<String, Value>>,
        seen: Mutex<Vec<Seen>>,
        version: AtomicU64,
        /// Reads of a workload before its status says it has rolled out
        /// (`u64::MAX`: never).
        rollout_after: AtomicU64,
        reads: Mutex<HashMap<String, u64>>,
        /// The next replace fails with 409, as when another writer won.
        conflict_next_replace: AtomicBool,
    }

    fn api_status(code: u16, reason: &str) -> (u16, Value) {
        let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": reason, "reason": reason, "code": code});
        (code, body)
    }

    fn strip(object: &Value) -> Value {
        let mut o = object.clone();
        if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "resourceVersion",
                "generation",
                "managedFields",
                "uid",
                "creationTimestamp",
            ] {
                m.remove(k);
            }
        }
        if let Some(o) = o.as_object_mut() {
            o.remove("status");
        }
        o
    }

    impl FakeApi {
        fn stamp(&self, object: &mut Value, generation: i64) {
            let rv = self.version.fetch_add(1, Ordering::SeqCst) + 1;
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            object["metadata"]["generation"] = json!(generation);
        }

        fn with_status(&self, path: &str, object: &Value) -> Value {
            let mut object = object.clone();
            let workload = path.contains("/deployments/") || path.contains("/statefulsets/");
            if !workload {
                return object;
            }
            let reads = {
                let mut reads = self.reads.lock().unwrap();
                let n = reads.entry(path.to_string()).or_default();
                *n += 1;
                *n
            };
            let replicas = object["spec"]["replicas"].as_i64().unwrap_or(1);
            let done = reads > self.rollout_after.load(Ordering::SeqCst);
            let n = if done { replicas } else { 0 };
            object["status"] = json!({
                "observedGeneration": object["metadata"]["generation"],
                "replicas": replicas, "availableReplicas": n, "readyReplicas": n,
                "updatedReplicas": n, "currentRevision": "r1", "updateRevision": "r1",
            });
            object
        }

        fn handle(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
            let mut objects = self.objects.lock().unwrap();
            match method {
                "GET" => {
                    if let Some(o) = objects.get(path) {
                        return (200, self.with_status(path, o));
                    }
                    let prefix = format!("{path}/");
                    let items: Vec<Value> = objects
                        .iter()
                        .filter(|(p, _)| p.starts_with(&prefix) && !p[prefix.len()..].contains('/'))
                        .map(|(p, o)| self.with_status(p, o))
                        .collect();
                    if path.ends_with('s') && !path.ends_with("/namespaces/rag") {
                        return (
                            200,
                            json!({"apiVersion": "v1", "kind": "List",
                            "metadata": {"resourceVersion": "1"}, "items": items}),
                        );
                    }
                    api_status(404, "NotFound")
                }
                "PATCH" => {
                    let (changed, generation) = match objects.get(path) {
                        Some(old) => (
                            strip(old) != strip(&body),
                            old["metadata"]["generation"].as_i64().unwrap_or(1),
                        ),
                        None => (true, 0),
                    };
                    if changed {
                        let mut object = body;
                        self.stamp(&mut object, generation + 1);
                        objects.insert(path.to_string(), object);
                    }
                    (200, objects[path].clone())
                }
                "POST" => {
                    let name = body["metadata"]["name"].as_str().unwrap_or_default();
                    let path = format!("{path}/{name}");
                    if objects.contains_key(&path) {
                        return api_status(409, "AlreadyExists");
                    }
                    let mut object = body;
                    self.stamp(&mut object, 1);
                    objects.insert(path.clone(), object.clone());
                    (201, object)
                }
                "PUT" => {
                    let Some(old) = objects.get(path) else {
                        return api_status(404, "NotFound");
                    };
                    let stale =
                        old["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"];
                    if stale || self.conflict_next_replace.swap(false, Ordering::SeqCst) {
                        return api_status(409, "Conflict");
                    }
                    let mut object = body;
                    self.stamp(&mut object, 1);
                    objects.insert(path.to_string(), object.clone());
                    (200, object)
                }
                _ => api_status(405, "MethodNotAllowed"),
            }
        }

        fn requests(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }

        fn object(&self, path: &str) -> Value {
            self.objects.lock().unwrap()[path].clone()
        }
    }

    fn client(fake: Arc<FakeApi>) -> Client {
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let fake = fake.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body.collect().await.unwrap().to_bytes();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let seen = Seen {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().unwrap_or_default().to_string(),
                    content_type: parts
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default(),
                    body: body.clone(),
                };
                fake.seen.lock().unwrap().push(seen.clone());
                let (code, reply) = fake.handle(&seen.method, &seen.path, body);
                let response = http::Response::builder()
                    .status(code)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&reply).unwrap(),
                    ))
                    .unwrap();
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        Client::new(service, "default")
    }

    const OVERLAY: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: rag
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: rag-config
  namespace: rag
data:
  rag.toml: |
    data_dir = \"/data\"
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: rag-api
  namespace: rag
spec:
  replicas: 2
  selector: {matchLabels: {app: rag}}
  template:
    metadata: {labels: {app: rag}}
    spec: {containers: [{name: rag, image: rag:latest}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: qdrant
spec:
  replicas: 3
  serviceName: qdrant-headless
  selector: {matchLabels: {app: qdrant}}
  template:
    metadata: {labels: {app: qdrant}}
    spec: {containers: [{name: qdrant, image: qdrant/qdrant}]}
";

    #[tokio::test]
    async fn deploy_applies_server_side_and_reports_what_changed() {
        let fake = Arc::new(FakeApi::default());
        let client = client(fake.clone());
        let objects = parse_objects(OVERLAY).unwrap();
        assert_eq!(objects.len(), 4);

        let applied = apply(&client, &objects, "rag").await.unwrap();
        let changes: Vec<(&str, Change)> = applied
            .iter()
            .map(|a| (a.name.as_str(), a.change))
            .collect();
        assert_eq!(
            changes,
            [
                ("rag", Change::Created),
                ("rag-config", Change::Created),
                ("rag-api", Change::Created),
                ("qdrant", Change::Created)
            ]
        );
        // Each object: read, then one server-side apply under our field
        // manager, forced, as apply-patch YAML, at its own path (the
        // StatefulSet without a namespace lands in the one asked for).
        let requests = fake.requests();
        let paths = [
            "/api/v1/namespaces/rag",
            "/api/v1/namespaces/rag/configmaps/rag-config",
            "/apis/apps/v1/namespaces/rag/deployments/rag-api",
            "/apis/apps/v1/namespaces/rag/statefulsets/qdrant",
        ];
        assert_eq!(requests.len(), 8);
        for (pair, path) in requests.chunks(2).zip(paths) {
            assert_eq!(
                (pair[0].method.as_str(), pair[0].path.as_str()),
                ("GET", path)
            );
            let patch = &pair[1];
            assert_eq!(
                (patch.method.as_str(), patch.path.as_str()),
                ("PATCH", path)
            );
            assert_eq!(patch.content_type, "application/apply-patch+yaml");
            let query: Vec<&str> = patch.query.split('&').collect();
            assert!(
                query.contains(&"fieldManager=rag") && query.contains(&"force=true"),
                "{query:?}"
            );
        }
        assert_eq!(requests[7].body["metadata"]["namespace"], "rag");

        // Applying the same again changes nothing; an edited ConfigMap is
        // configured.
        let again = apply(&client, &objects, "rag").await.unwrap();
        assert!(
            again.iter().all(|a| a.change == Change::Unchanged),
            "{again:?}"
        );
        let edited = parse_objects(&OVERLAY.replace("/data", "/srv")).unwrap();
        let changes: Vec<Change> = apply(&client, &edited, "rag")
            .await
            .unwrap()
            .iter()
            .map(|a| a.change)
            .collect();
        assert_eq!(
            changes,
            [
                Change::Unchanged,
                Change::Configured,
                Change::Unchanged,
                Change::Unchanged
            ]
        );
    }

    #[tokio::test]
    async fn rollouts_are_polled_until_ready_or_the_timeout() {
        let fake = Arc::new(FakeApi::default());
        let client = client(fake.clone());
        let applied = apply(&client, &parse_objects(OVERLAY).unwrap(), "rag")
            .await
            .unwrap();

        fake.rollout_after.store(2, Ordering::SeqCst);
        let rollouts = wait_ready(
            &client,
            &applied,
            Duration::from_secs(5),
            Duration::from_millis(5),
        )
        .await
        .unwrap();
        let state: Vec<(&str, i32, bool)> = rollouts
            .iter()
            .map(|r| (r.name.as_str(), r.ready, r.done))
            .collect();
        assert_eq!(state, [("rag-api", 2, true), ("qdrant", 3, true)]);
        let polls = fake
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("/deployments/rag-api"))
            .count();
        assert_eq!(polls, 1 + 3, "one read before the apply, then three polls");

        // Never ready: the last state comes back when time is up.
        fake.rollout_after.store(u64::MAX, Ordering::SeqCst);
        fake.reads.lock().unwrap().clear();
        let rollouts = wait_ready(
            &client,
            &applied,
            Duration::from_millis(30),
            Duration::from_millis(5),
        )
        .await
        .unwrap();
        assert!(
            rollouts.iter().all(|r| !r.done && r.ready == 0),
            "{rollouts:?}"
        );

        // `rag status` lists the same from the namespace.
        fake.rollout_after.store(0, Ordering::SeqCst);
        let listed = status(&client, "rag").await.unwrap();
        let names: Vec<(&str, &str, bool)> = listed
            .iter()
            .map(|r| (r.kind.as_str(), r.name.as_str(), r.done))
            .collect();
        assert_eq!(
            names,
            [
                ("Deployment", "rag-api", true),
                ("StatefulSet", "qdrant", true)
            ]
        );
    }

    #[tokio::test]
    async fn one_lease_holder_renews_hands_over_and_loses_races() {
        let fake = Arc::new(FakeApi::default());
        let lock = |who: &str| {
            LeaseLock::new(
                client(fake.clone()),
                "rag",
                "rag-resync",
                who,
                Duration::from_secs(15),
            )
        };
        let (a, b) = (lock("pod-a"), lock("pod-b"));
        let path = "/apis/coordination.k8s.io/v1/namespaces/rag/leases/rag-resync";
        let holder = || fake.object(path)["spec"]["holderIdentity"].clone();

        // The first one creates it.
        assert!(a.acquire_or_renew().await.unwrap());
        let create = fake
            .requests()
            .into_iter()
            .find(|r| r.method == "POST")
            .unwrap();
        assert_eq!(
            create.path,
            "/apis/coordination.k8s.io/v1/namespaces/rag/leases"
        );
        assert_eq!(create.body["spec"]["holderIdentity"], "pod-a");
        assert_eq!(create.body["spec"]["leaseDurationSeconds"], 15);
        // Held and fresh: the other one does not get it.
        assert!(!b.acquire_or_renew().await.unwrap());
        // Renewal: a replace carrying the version it read.
        let before = fake.object(path)["metadata"]["resourceVersion"].clone();
        assert!(a.acquire_or_renew().await.unwrap());
        let renew = fake
            .requests()
            .into_iter()
            .rfind(|r| r.method == "PUT")
            .unwrap();
        assert_eq!(renew.body["metadata"]["resourceVersion"], before);
        assert_eq!(holder(), "pod-a");

        // Expired (not renewed for longer than its duration): taken over.
        fake.objects.lock().unwrap().get_mut(path).unwrap()["spec"]["renewTime"] =
            json!("2026-01-01T00:00:00.000000Z");
        assert!(b.acquire_or_renew().await.unwrap());
        assert_eq!(holder(), "pod-b");
        assert_eq!(fake.object(path)["spec"]["leaseTransitions"], 1);
        assert!(!a.acquire_or_renew().await.unwrap());

        // Hand-over: released, the other one takes it at once.
        b.release().await.unwrap();
        assert_eq!(holder(), Value::Null);
        assert!(a.acquire_or_renew().await.unwrap());
        assert_eq!(fake.object(path)["spec"]["leaseTransitions"], 2);

        // A race lost (409 on the replace) is "not leader", not an error.
        fake.objects.lock().unwrap().get_mut(path).unwrap()["spec"]["renewTime"] =
            json!("2026-01-01T00:00:00.000000Z");
        fake.conflict_next_replace.store(true, Ordering::SeqCst);
        assert!(!b.acquire_or_renew().await.unwrap());
        assert_eq!(holder(), "pod-a");
    }

    #[tokio::test]
    async fn a_holder_renews_until_another_takes_the_lease() {
        let fake = Arc::new(FakeApi::default());
        let a = LeaseLock::new(
            client(fake.clone()),
            "rag",
            "rag-resync",
            "pod-a",
            Duration::from_millis(30),
        );
        assert!(a.acquire_or_renew().await.unwrap());
        let path = "/apis/coordination.k8s.io/v1/namespaces/rag/leases/rag-resync";
        let hold = a.hold();
        tokio::pin!(hold);
        // It renews while the work runs...
        let renewals = || fake.requests().iter().filter(|r| r.method == "PUT").count();
        while renewals() < 2 {
            tokio::select! {
                _ = &mut hold => panic!("gave up a Lease it holds"),
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
        assert_eq!(fake.object(path)["spec"]["holderIdentity"], "pod-a");
        // ...and stops when another replica has taken the Lease.
        fake.objects.lock().unwrap().get_mut(path).unwrap()["spec"]["holderIdentity"] =
            json!("pod-b");
        let lost = hold.await;
        assert!(
            lost.to_string().contains("lost the Lease rag-resync"),
            "{lost}"
        );
    }

    #[test]
    fn manifests_without_kind_or_name_are_refused() {
        assert!(parse_objects("apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n").is_err());
        assert!(parse_objects("kind: [not yaml").is_err());
        assert!(parse_objects("---\n---\n").unwrap().is_empty());
    }

    /// Against the cluster of the current kubeconfig: `RAG_K8S_TEST=1`.
    #[tokio::test]
    async fn real_cluster() {
        if std::env::var_os("RAG_K8S_TEST").is_none() {
            eprintln!(
                "skipped: set RAG_K8S_TEST=1 to run against the current kubeconfig's cluster"
            );
            return;
        }
        let client = Client::try_default().await.unwrap();
        let manifest = "apiVersion: v1\nkind: Namespace\nmetadata: {name: rag-k8s-test}\n---\n\
                        apiVersion: v1\nkind: ConfigMap\nmetadata: {name: rag-probe}\ndata: {a: b}\n";
        let objects = parse_objects(manifest).unwrap();
        apply(&client, &objects, "rag-k8s-test").await.unwrap();
        let again = apply(&client, &objects, "rag-k8s-test").await.unwrap();
        assert!(
            again.iter().all(|a| a.change == Change::Unchanged),
            "{again:?}"
        );
        let lock = LeaseLock::new(
            client.clone(),
            "rag-k8s-test",
            "rag-probe",
            "test",
            Duration::from_secs(10),
        );
        assert!(lock.acquire_or_renew().await.unwrap());
        lock.release().await.unwrap();
    }
}

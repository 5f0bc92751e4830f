//! `rag deploy`, `rag status` and the re-sync Lease of `rag ingest --lease`.
use std::path::PathBuf;
use std::process::ExitCode;

use crate::ops::cluster;

#[derive(clap::Args)]
pub struct DeployArgs {
    /// An overlay name (`embedded`, `gpu`, `vllm`, `cluster`) or a
    /// kustomize folder.
    #[arg(long)]
    pub overlay: String,
    /// Where objects without a namespace go.
    #[arg(long, default_value = "rag")]
    pub namespace: String,
    /// Seconds to wait for the rollouts.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    #[arg(long, default_value = "kubectl")]
    pub kubectl: String,
    /// Print the objects the overlay holds and stop, without a cluster.
    #[arg(long)]
    pub print: bool,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[arg(long, default_value = "rag")]
    pub namespace: String,
    #[arg(long)]
    pub json: bool,
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let StatusArgs { namespace, json } = args;
    let client = kube::Client::try_default().await?;
    let rollouts = cluster::status(&client, &namespace).await?;
    print_rollouts(&rollouts, json)?;
    Ok(ExitCode::SUCCESS)
}

/// Takes the re-sync Lease in this pod's namespace, as this pod (its host
/// name); `None` when another replica holds it.
pub(super) async fn resync_lease(name: &str) -> anyhow::Result<Option<cluster::LeaseLock>> {
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("--lease needs a Kubernetes API (in a pod, or a kubeconfig): {e}")
    })?;
    let namespace = client.default_namespace().to_string();
    let identity =
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("rag-{}", std::process::id()));
    let lock = cluster::LeaseLock::new(client, &namespace, name, &identity, RESYNC_LEASE);
    Ok(lock.acquire_or_renew().await?.then_some(lock))
}

/// How long the re-sync Lease lasts without renewal; it is renewed three
/// times as often.
const RESYNC_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

pub async fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let DeployArgs {
        overlay,
        namespace,
        timeout,
        kubectl,
        print,
    } = args;
    let (overlay, namespace, kubectl) = (overlay.as_str(), namespace.as_str(), kubectl.as_str());
    let dir = if overlay.contains('/') {
        PathBuf::from(overlay)
    } else {
        PathBuf::from("k8s/overlays").join(overlay)
    };
    anyhow::ensure!(
        dir.join("kustomization.yaml").exists(),
        "no overlay at {} (overlays: embedded, gpu, vllm, cluster; run from the repository root or give a folder)",
        dir.display()
    );
    let objects = cluster::parse_objects(&cluster::render(&dir, kubectl)?)?;
    if print {
        for o in &objects {
            let kind = o
                .types
                .as_ref()
                .map(|t| t.kind.as_str())
                .unwrap_or_default();
            let name = o.metadata.name.as_deref().unwrap_or_default();
            if cluster::is_cluster_scoped(kind) {
                println!("{kind} {name}");
            } else {
                let ns = o.metadata.namespace.as_deref().unwrap_or(namespace);
                println!("{kind} {ns}/{name}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let client = kube::Client::try_default().await?;
    let applied = cluster::apply(&client, &objects, namespace).await?;
    for a in &applied {
        let change = match a.change {
            cluster::Change::Created => "created",
            cluster::Change::Configured => "configured",
            cluster::Change::Unchanged => "unchanged",
        };
        let ns = a
            .namespace
            .as_deref()
            .map(|n| format!("{n}/"))
            .unwrap_or_default();
        println!("{change:<10} {} {ns}{}", a.kind, a.name);
    }
    let rollouts = cluster::wait_ready(
        &client,
        &applied,
        std::time::Duration::from_secs(timeout),
        std::time::Duration::from_secs(2),
    )
    .await?;
    print_rollouts(&rollouts, false)?;
    Ok(if rollouts.iter().all(|r| r.done) {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "still rolling out after {timeout} s: see `rag status --namespace {namespace}` and `kubectl get events -n {namespace}`"
        );
        ExitCode::from(5)
    })
}

fn print_rollouts(rollouts: &[cluster::Rollout], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rollouts)?);
        return Ok(());
    }
    for r in rollouts {
        let state = if r.done { "ready" } else { "waiting" };
        println!(
            "{state:<10} {} {}: {} of {} ready, {} updated",
            r.kind, r.name, r.ready, r.desired, r.updated
        );
    }
    Ok(())
}

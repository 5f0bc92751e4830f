//! The collection on the server: created when missing (safely when
//! several replicas start at once), its payload indexes ensured at every
//! start, and an existing one checked against the settings.

use std::collections::HashMap;

use async_trait::async_trait;
use qdrant_client::Qdrant;
use qdrant_client::qdrant::{
    CollectionClusterInfoResponse, CollectionInfo, CreateCollection, CreateCollectionBuilder,
    CreateFieldIndexCollection, CreateFieldIndexCollectionBuilder, Distance, FieldType, Modifier,
    ReplicaState, SparseVectorParamsBuilder, SparseVectorsConfigBuilder, VectorParamsBuilder,
    VectorsConfigBuilder,
};
use rag_core::{Error, Result};

use super::{ServerSettings, server_error};
use crate::edge::{DENSE, INDEXED_FIELDS, SPARSE};

/// What a collection is, as far as this store cares; read from the
/// server's collection info and its cluster info.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Layout {
    /// Dense vectors by name: (size, distance).
    pub dense: HashMap<String, (u64, Distance)>,
    /// Sparse vectors by name: their modifier.
    pub sparse: HashMap<String, Option<Modifier>>,
    pub shard_number: u32,
    pub replication_factor: u32,
    /// Active replicas of each shard, by shard id, as one peer sees them.
    pub active_replicas: HashMap<u32, u32>,
    /// Every copy of every shard: where it is and its state.
    pub copies: Vec<ShardCopy>,
    /// Payload fields with an index.
    pub indexed: Vec<String>,
}

impl Layout {
    pub fn of(info: &CollectionInfo, cluster: &CollectionClusterInfoResponse) -> Self {
        use qdrant_client::qdrant::vectors_config::Config;
        let params = info.config.as_ref().and_then(|c| c.params.as_ref());
        let mut dense = HashMap::new();
        match params
            .and_then(|p| p.vectors_config.as_ref())
            .and_then(|v| v.config.as_ref())
        {
            Some(Config::Params(p)) => {
                dense.insert(String::new(), (p.size, distance(p.distance)));
            }
            Some(Config::ParamsMap(m)) => {
                for (name, p) in &m.map {
                    dense.insert(name.clone(), (p.size, distance(p.distance)));
                }
            }
            None => {}
        }
        let sparse = params
            .and_then(|p| p.sparse_vectors_config.as_ref())
            .map(|s| {
                s.map
                    .iter()
                    .map(|(name, p)| {
                        let modifier = p.modifier.and_then(|m| Modifier::try_from(m).ok());
                        (name.clone(), modifier.filter(|m| *m != Modifier::None))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let copies: Vec<ShardCopy> = cluster
            .local_shards
            .iter()
            .map(|s| (s.shard_id, cluster.peer_id, s.state))
            .chain(
                cluster
                    .remote_shards
                    .iter()
                    .map(|s| (s.shard_id, s.peer_id, s.state)),
            )
            .map(|(shard, peer, state)| ShardCopy {
                shard,
                peer,
                state: ReplicaState::try_from(state).unwrap_or(ReplicaState::Dead),
            })
            .collect();
        let mut active_replicas: HashMap<u32, u32> = HashMap::new();
        for copy in &copies {
            let count = active_replicas.entry(copy.shard).or_default();
            *count += u32::from(copy.state == ReplicaState::Active);
        }
        let mut indexed: Vec<String> = info.payload_schema.keys().cloned().collect();
        indexed.sort();
        Self {
            dense,
            sparse,
            shard_number: params.map_or(0, |p| p.shard_number),
            replication_factor: params.and_then(|p| p.replication_factor).unwrap_or(1),
            active_replicas,
            copies,
            indexed,
        }
    }

    /// Shards with a copy still being set up (right after creation, or
    /// while a copy is transferred).
    fn initializing(&self) -> Vec<u32> {
        let mut shards: Vec<u32> = self
            .copies
            .iter()
            .filter(|c| c.state == ReplicaState::Initializing)
            .map(|c| c.shard)
            .collect();
        shards.sort();
        shards.dedup();
        shards
    }
}

/// One copy of a shard: the peer it lives on and its state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShardCopy {
    pub shard: u32,
    pub peer: u64,
    pub state: ReplicaState,
}

/// The cluster's peers as the server asked sees them (Qdrant's
/// `GET /cluster`, on its REST API only). A single server has none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Peers {
    /// Peer id to its address.
    pub uris: HashMap<u64, String>,
    /// Peers the server fails to reach now, with the latest error: Qdrant
    /// keeps a peer's consecutive send failures until one succeeds.
    pub unreachable: HashMap<u64, String>,
}

impl Peers {
    /// Whether the peer that sent this `GET /cluster` body is the Raft
    /// leader: only the leader sends to every peer, so only its send
    /// failures are current for all of them.
    fn from_leader(body: &serde_json::Value) -> bool {
        body["result"]["raft_info"]["role"] == "Leader"
    }

    /// Reads the body of `GET /cluster`: the peers, and those this peer
    /// fails to send to.
    pub fn from_cluster_status(body: &serde_json::Value) -> Result<Self> {
        let result = &body["result"];
        let mut peers = Peers::default();
        if result["status"] != "enabled" {
            return Ok(peers);
        }
        let Some(listed) = result["peers"].as_object() else {
            return Err(Error::unavailable(
                "the Qdrant cluster status names no peers",
            ));
        };
        for (id, info) in listed {
            let id: u64 = id.parse().map_err(|_| {
                Error::unavailable(format!("the Qdrant cluster status names peer {id:?}"))
            })?;
            let uri = info["uri"].as_str().unwrap_or_default().to_string();
            peers.uris.insert(id, uri);
        }
        let failing = result["message_send_failures"].as_object();
        for (uri, failures) in failing.into_iter().flatten() {
            let same = |known: &str| known.trim_end_matches('/') == uri.trim_end_matches('/');
            if let Some((&id, _)) = peers.uris.iter().find(|(_, known)| same(known)) {
                let error = failures["latest_error"].as_str().unwrap_or("no answer");
                peers.unreachable.insert(id, error.to_string());
            }
        }
        Ok(peers)
    }

    fn describe(&self, id: u64) -> String {
        let uri = self.uris.get(&id).map(String::as_str).unwrap_or("?");
        let error = self.unreachable.get(&id).map(String::as_str).unwrap_or("");
        format!("peer {id} ({uri}; latest error: {error})")
    }

    /// The unreachable peers, described, in id order.
    fn unreachable_described(&self) -> Vec<String> {
        let mut ids: Vec<u64> = self.unreachable.keys().copied().collect();
        ids.sort();
        ids.into_iter().map(|id| self.describe(id)).collect()
    }
}

/// What a lost peer means for the collection: one message per
/// unreachable peer, naming every shard with a copy on it (and saying
/// when that was a shard's last live copy).
pub fn peer_warnings(settings: &ServerSettings, layout: &Layout, peers: &Peers) -> Vec<String> {
    let name = &settings.collection;
    let mut ids: Vec<u64> = peers.unreachable.keys().copied().collect();
    ids.sort();
    let mut warnings = Vec::new();
    for id in ids {
        let mut shards: Vec<u32> = layout
            .copies
            .iter()
            .filter(|c| c.peer == id)
            .map(|c| c.shard)
            .collect();
        shards.sort();
        shards.dedup();
        let orphaned: Vec<String> = shards
            .iter()
            .filter(|shard| {
                !layout.copies.iter().any(|c| {
                    c.shard == **shard
                        && !peers.unreachable.contains_key(&c.peer)
                        && c.state == ReplicaState::Active
                })
            })
            .map(u32::to_string)
            .collect();
        let listed: Vec<String> = shards.iter().map(u32::to_string).collect();
        let mut message = format!(
            "Qdrant {} is unreachable: collection {name:?} has a copy of shard(s) {} there",
            peers.describe(id),
            if listed.is_empty() {
                "none".to_string()
            } else {
                listed.join(", ")
            }
        );
        if orphaned.is_empty() {
            message.push_str("; the other copies serve searches and writes meanwhile");
        } else {
            message.push_str(&format!(
                "; shard(s) {} have no other active copy, so their passages are missing from \
                 answers",
                orphaned.join(", ")
            ));
        }
        message
            .push_str(": restart the peer, or remove it from the cluster and replicate its shards");
        warnings.push(message);
    }
    warnings
}

fn distance(d: i32) -> Distance {
    Distance::try_from(d).unwrap_or(Distance::UnknownDistance)
}

/// Compares an existing collection with what the settings ask for:
/// `(errors, warnings)`. Errors are what the store cannot work with (the
/// wrong vectors) or what was configured differently; warnings are what
/// the cluster did not (yet) give (fewer active replicas than asked).
/// Each message names the mismatch and how to fix it.
pub fn check_layout(
    settings: &ServerSettings,
    dimension: usize,
    layout: &Layout,
) -> (Vec<String>, Vec<String>) {
    let name = &settings.collection;
    let fix = format!(
        "point vector_store.collection at a new collection (it is created on start) and \
         ingest again, or delete the collection {name:?}"
    );
    let mut errors = Vec::new();
    match layout.dense.get(DENSE) {
        None => errors.push(format!(
            "collection {name:?} has no dense vector named {DENSE:?} (it has {:?}); {fix}",
            layout.dense.keys().collect::<Vec<_>>()
        )),
        Some((size, d)) => {
            if *size != dimension as u64 {
                errors.push(format!(
                    "collection {name:?} holds {size}-d vectors but the embedder makes \
                     {dimension}-d ones; {fix}"
                ));
            }
            if *d != Distance::Cosine {
                errors.push(format!(
                    "collection {name:?} compares vectors by {d:?}, not Cosine; {fix}"
                ));
            }
        }
    }
    match layout.sparse.get(SPARSE) {
        None => errors.push(format!(
            "collection {name:?} has no sparse vector named {SPARSE:?} (BM25); {fix}"
        )),
        Some(m) if *m != Some(Modifier::Idf) => errors.push(format!(
            "collection {name:?}: its {SPARSE:?} vectors have modifier {m:?}, not Idf, so BM25 \
             scores would have no IDF; {fix}"
        )),
        Some(_) => {}
    }
    if layout.shard_number != settings.shard_number {
        errors.push(format!(
            "collection {name:?} has {} shards but vector_store.shard_number is {}; set it to {} \
             (the shard count of an existing collection does not change)",
            layout.shard_number, settings.shard_number, layout.shard_number
        ));
    }
    if layout.replication_factor != settings.replication_factor {
        errors.push(format!(
            "collection {name:?} has replication factor {} but vector_store.replication_factor \
             is {}; set it to {}, or change the collection's with Qdrant's update-collection API",
            layout.replication_factor, settings.replication_factor, layout.replication_factor
        ));
    }
    let mut warnings = Vec::new();
    let mut shards: Vec<_> = layout.active_replicas.iter().collect();
    shards.sort();
    let short: Vec<String> = shards
        .into_iter()
        .filter(|(_, n)| **n < settings.replication_factor)
        .map(|(shard, n)| format!("shard {shard}: {n}"))
        .collect();
    if !short.is_empty() {
        warnings.push(format!(
            "collection {name:?} has fewer active replicas than its replication factor {} \
             ({}): writes and searches work, but losing a peer may lose data; add peers, then \
             replicate the shards (Qdrant's replicate-shard API)",
            settings.replication_factor,
            short.join(", ")
        ));
    }
    (errors, warnings)
}

/// The collection operations [`ensure_collection`] needs; a trait so that
/// tests can play a server (two replicas starting at once, a slow cluster).
#[async_trait]
pub trait CollectionAdmin: Sync {
    async fn exists(&self, name: &str) -> Result<bool>;
    /// Creates the collection; an `Err` carries the server's message.
    async fn create(&self, request: CreateCollection) -> Result<(), String>;
    async fn create_index(&self, request: CreateFieldIndexCollection) -> Result<()>;
    async fn layout(&self, name: &str) -> Result<Layout>;
    /// The cluster's peers; none for a single server, or when the REST
    /// address is not known.
    async fn peers(&self) -> Result<Peers>;
}

pub(super) struct QdrantAdmin {
    pub(super) client: Qdrant,
    /// The REST API, for `GET /cluster`: its address and the API key.
    pub(super) rest: Option<(reqwest::Client, String, Option<String>)>,
}

impl QdrantAdmin {
    /// `GET {url}/cluster`, within `timeout`.
    async fn cluster_status(
        client: &reqwest::Client,
        url: &str,
        api_key: Option<&str>,
        timeout: std::time::Duration,
    ) -> Result<serde_json::Value> {
        let mut request = client.get(format!("{url}/cluster")).timeout(timeout);
        if let Some(key) = api_key {
            request = request.header("api-key", key);
        }
        request
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| {
                Error::unavailable(format!(
                    "reading the Qdrant cluster status at {url}/cluster (vector_store.rest_url)"
                ))
                .with_source(e)
            })?
            .json()
            .await
            .map_err(|e| Error::unavailable("the Qdrant cluster status is not JSON").with_source(e))
    }
}

/// The REST address of a peer: the host of its cluster address, with the
/// scheme and port of `rest_url` (every peer serves REST on the same port).
fn peer_rest_url(rest_url: &str, peer_uri: &str) -> Option<String> {
    let rest = reqwest::Url::parse(rest_url).ok()?;
    let peer = reqwest::Url::parse(peer_uri).ok()?;
    let port = rest.port_or_known_default()?;
    Some(format!("{}://{}:{port}", rest.scheme(), peer.host_str()?))
}

#[async_trait]
impl CollectionAdmin for QdrantAdmin {
    async fn exists(&self, name: &str) -> Result<bool> {
        self.client
            .collection_exists(name)
            .await
            .map_err(server_error)
    }
    async fn create(&self, request: CreateCollection) -> Result<(), String> {
        self.client
            .create_collection(request)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
    async fn create_index(&self, request: CreateFieldIndexCollection) -> Result<()> {
        self.client
            .create_field_index(request)
            .await
            .map(drop)
            .map_err(server_error)
    }
    async fn layout(&self, name: &str) -> Result<Layout> {
        let info = self
            .client
            .collection_info(name)
            .await
            .map_err(server_error)?;
        let cluster = self
            .client
            .collection_cluster_info(name)
            .await
            .map_err(server_error)?;
        Ok(Layout::of(
            &info
                .result
                .ok_or_else(|| Error::unavailable("the Qdrant server sent no collection info"))?,
            &cluster,
        ))
    }
    /// Asks the server behind `rest_url` for the peers, then every peer
    /// itself: a peer whose REST API does not answer is lost whatever the
    /// others say, and send failures count only as the Raft leader reports
    /// them (a follower sends to the leader alone, so its view of the
    /// others is stale).
    async fn peers(&self) -> Result<Peers> {
        let Some((client, url, api_key)) = &self.rest else {
            return Ok(Peers::default());
        };
        let key = api_key.as_deref();
        let per_peer = std::time::Duration::from_secs(3);
        let first = Self::cluster_status(client, url, key, per_peer).await?;
        let listed = Peers::from_cluster_status(&first)?;
        let mut peers = Peers {
            uris: listed.uris.clone(),
            unreachable: HashMap::new(),
        };
        let mut ids: Vec<u64> = listed.uris.keys().copied().collect();
        ids.sort();
        for id in ids {
            let uri = &listed.uris[&id];
            let Some(rest) = peer_rest_url(url, uri) else {
                continue;
            };
            match Self::cluster_status(client, &rest, key, per_peer).await {
                Ok(body) if Peers::from_leader(&body) => {
                    let seen = Peers::from_cluster_status(&body)?;
                    peers.unreachable.extend(seen.unreachable);
                }
                Ok(_) => {}
                Err(e) => {
                    peers.unreachable.insert(
                        id,
                        format!("its REST API at {rest} does not answer: {}", e.chain()),
                    );
                }
            }
        }
        Ok(peers)
    }
}

/// Creates the collection unless it exists, waits until it answers,
/// ensures its payload indexes, and checks its layout; returns the
/// warnings. Safe when several replicas start at once: "already exists"
/// from a create is success, every start waits out the moment after
/// creation when the shard copies are still initialising (collection
/// info fails meanwhile), and the indexes are ensured at every start, so
/// a start that failed midway is completed by the next. With a peer
/// unreachable it fails at once, naming the peer, rather than wait out
/// `create_timeout_s`.
pub async fn ensure_collection(
    admin: &dyn CollectionAdmin,
    settings: &ServerSettings,
    dimension: usize,
) -> Result<Vec<String>> {
    let name = &settings.collection;
    let deadline = tokio::time::Instant::now() + settings.create_timeout;
    let existed = admin.exists(name).await?;
    if !existed {
        let lost = peers_or_none(admin).await.unreachable_described();
        if !lost.is_empty() {
            return Err(Error::unavailable(format!(
                "cannot create the collection {name:?}: Qdrant {} unreachable; start it, or \
                 remove it from the cluster, and start again",
                lost.join(", ")
            )));
        }
        match admin.create(create_collection(settings, dimension)).await {
            Ok(()) => tracing::info!(collection = %name, "created the collection"),
            Err(e) if e.contains("already exists") => {
                tracing::info!(collection = %name, "another process created the collection")
            }
            Err(e) => {
                return Err(Error::unavailable(format!(
                    "creating the collection {name:?} (within vector_store.create_timeout_s = \
                     {} s): {e}",
                    settings.create_timeout.as_secs()
                )));
            }
        }
    }
    // Checked before anything is written to it: a collection of another
    // layout is refused as it is.
    let layout = ready_layout(admin, settings, deadline, existed).await?;
    let (errors, warnings) = check_layout(settings, dimension, &layout);
    if !errors.is_empty() {
        return Err(Error::invalid(errors.join("; ")));
    }
    for index in field_indexes(name) {
        if !layout.indexed.contains(&index.field_name) {
            admin.create_index(index).await?;
        }
    }
    Ok(warnings)
}

/// The peers, or none when they cannot be read (a single server without
/// its REST port open, a moment's error): the check is for a clearer
/// message and never stops a start by itself.
async fn peers_or_none(admin: &dyn CollectionAdmin) -> Peers {
    admin.peers().await.unwrap_or_else(|e| {
        tracing::warn!(error = %e.chain(), "the Qdrant cluster's peers cannot be read");
        Peers::default()
    })
}

/// The collection's layout once it answers and no shard copy is still
/// initialising, asked again (100 ms, doubling to 1 s) until `deadline`.
/// A copy initialising on an unreachable peer will not finish: that fails
/// at once, naming the peer. A collection that `existed` before this start
/// and still has a copy initialising at the deadline is used as it is
/// (its warnings say what is short), as before this wait.
async fn ready_layout(
    admin: &dyn CollectionAdmin,
    settings: &ServerSettings,
    deadline: tokio::time::Instant,
    existed: bool,
) -> Result<Layout> {
    let name = &settings.collection;
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        let waiting = match admin.layout(name).await {
            Ok(layout) if layout.initializing().is_empty() => return Ok(layout),
            Ok(layout) if existed && tokio::time::Instant::now() + pause > deadline => {
                return Ok(layout);
            }
            Ok(layout) => {
                let peers = peers_or_none(admin).await;
                let stuck: Vec<String> = layout
                    .copies
                    .iter()
                    .filter(|c| {
                        c.state == ReplicaState::Initializing
                            && peers.unreachable.contains_key(&c.peer)
                    })
                    .map(|c| format!("shard {} on {}", c.shard, peers.describe(c.peer)))
                    .collect();
                if !stuck.is_empty() {
                    return Err(Error::unavailable(format!(
                        "the collection {name:?} cannot finish setting up: {} unreachable; \
                         start the peer, or remove it from the cluster, and start again",
                        stuck.join(", ")
                    )));
                }
                let shards: Vec<String> =
                    layout.initializing().iter().map(u32::to_string).collect();
                Error::unavailable(format!("shard(s) {} still initialising", shards.join(", ")))
            }
            // Only a server that cannot answer yet is waited for.
            Err(e) if e.kind() != rag_core::ErrorKind::Unavailable => return Err(e),
            Err(e) => e,
        };
        if tokio::time::Instant::now() + pause > deadline {
            return Err(Error::unavailable(format!(
                "the collection {name:?} was not ready within vector_store.create_timeout_s \
                 ({} s): {}",
                settings.create_timeout.as_secs_f64(),
                waiting.chain()
            )));
        }
        tracing::debug!(collection = %name, reason = %waiting.chain(), "waiting for the collection");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(1));
    }
}

/// The collection: named dense (cosine) and BM25 (IDF by the server)
/// vectors, sharded and replicated as configured.
pub fn create_collection(settings: &ServerSettings, dimension: usize) -> CreateCollection {
    let mut dense = VectorsConfigBuilder::default();
    dense.add_named_vector_params(
        DENSE,
        VectorParamsBuilder::new(dimension as u64, Distance::Cosine),
    );
    let mut sparse = SparseVectorsConfigBuilder::default();
    sparse.add_named_vector_params(
        SPARSE,
        SparseVectorParamsBuilder::default().modifier(Modifier::Idf as i32),
    );
    CreateCollectionBuilder::new(&settings.collection)
        .vectors_config(dense)
        .sparse_vectors_config(sparse)
        .shard_number(settings.shard_number)
        .replication_factor(settings.replication_factor)
        .write_consistency_factor(settings.write_consistency_factor)
        .timeout(settings.create_timeout.as_secs().max(1))
        .build()
}

/// A keyword index per filter field.
pub fn field_indexes(collection: &str) -> Vec<CreateFieldIndexCollection> {
    INDEXED_FIELDS
        .iter()
        .map(|field| {
            CreateFieldIndexCollectionBuilder::new(collection, *field, FieldType::Keyword)
                .wait(true)
                .build()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use qdrant_client::qdrant::vectors_config::Config;

    use super::*;

    #[test]
    fn the_collection_has_both_vectors_its_layout_and_indexes() {
        let settings = ServerSettings {
            collection: "docs".into(),
            shard_number: 6,
            replication_factor: 2,
            write_consistency_factor: 2,
            ..Default::default()
        };
        let c = create_collection(&settings, 384);
        assert_eq!(c.collection_name, "docs");
        assert_eq!(
            (
                c.shard_number,
                c.replication_factor,
                c.write_consistency_factor
            ),
            (Some(6), Some(2), Some(2))
        );
        let Some(Config::ParamsMap(map)) = c.vectors_config.and_then(|v| v.config) else {
            panic!("named vectors expected");
        };
        let dense = &map.map[DENSE];
        assert_eq!((dense.size, dense.distance), (384, Distance::Cosine as i32));
        let sparse = &c.sparse_vectors_config.unwrap().map[SPARSE];
        assert_eq!(sparse.modifier, Some(Modifier::Idf as i32));
        let fields: Vec<String> = field_indexes("docs")
            .into_iter()
            .map(|i| {
                assert_eq!(i.field_type, Some(FieldType::Keyword as i32));
                assert_eq!(i.wait, Some(true));
                i.field_name
            })
            .collect();
        assert_eq!(fields, INDEXED_FIELDS);
    }

    /// A cluster of three peers in memory: collections as layouts, a
    /// create that takes a while (so two starts overlap), one that can be
    /// made to fail after creating (a create that outlives its timeout).
    /// Like Qdrant, right after a create every shard copy is initialising
    /// for `init_window`, and collection info fails meanwhile; a copy on
    /// an unreachable peer stays initialising.
    #[derive(Default)]
    struct FakeServer {
        collections: std::sync::Mutex<HashMap<String, Layout>>,
        creates: std::sync::atomic::AtomicUsize,
        fail_after_create: std::sync::atomic::AtomicBool,
        init_window: Duration,
        created_at: std::sync::Mutex<Option<tokio::time::Instant>>,
        peers: std::sync::Mutex<Peers>,
        /// The peer status cannot be read (REST closed).
        peers_fail: std::sync::atomic::AtomicBool,
    }

    const PEERS: u64 = 3;

    impl FakeServer {
        fn with_init_window(window: Duration) -> Self {
            Self {
                init_window: window,
                ..Self::default()
            }
        }

        fn lose_peer(&self, id: u64) {
            let mut peers = self.peers.lock().unwrap();
            *peers = cluster_peers();
            peers
                .unreachable
                .insert(id, "transport error: connection refused".into());
        }
    }

    fn cluster_peers() -> Peers {
        Peers {
            uris: (1..=PEERS)
                .map(|id| (id, format!("http://qdrant-{}.qdrant:6335/", id - 1)))
                .collect(),
            unreachable: HashMap::new(),
        }
    }

    #[async_trait]
    impl CollectionAdmin for FakeServer {
        async fn exists(&self, name: &str) -> Result<bool> {
            Ok(self.collections.lock().unwrap().contains_key(name))
        }
        async fn create(&self, request: CreateCollection) -> Result<(), String> {
            self.creates
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let Some(Config::ParamsMap(map)) = request.vectors_config.and_then(|v| v.config) else {
                return Err("bad request".into());
            };
            let layout = Layout {
                dense: map
                    .map
                    .iter()
                    .map(|(n, p)| (n.clone(), (p.size, distance(p.distance))))
                    .collect(),
                sparse: request
                    .sparse_vectors_config
                    .unwrap()
                    .map
                    .iter()
                    .map(|(n, p)| {
                        (
                            n.clone(),
                            p.modifier.and_then(|m| Modifier::try_from(m).ok()),
                        )
                    })
                    .collect(),
                shard_number: request.shard_number.unwrap_or(1),
                replication_factor: request.replication_factor.unwrap_or(1),
                active_replicas: (0..request.shard_number.unwrap_or(1))
                    .map(|s| (s, request.replication_factor.unwrap_or(1)))
                    .collect(),
                copies: (0..request.shard_number.unwrap_or(1))
                    .flat_map(|shard| {
                        (0..request.replication_factor.unwrap_or(1)).map(move |r| ShardCopy {
                            shard,
                            peer: u64::from(shard + r) % PEERS + 1,
                            state: ReplicaState::Initializing,
                        })
                    })
                    .collect(),
                indexed: vec![],
            };
            let mut collections = self.collections.lock().unwrap();
            if collections.contains_key(&request.collection_name) {
                return Err(format!(
                    "status: InvalidArgument, message: \"Wrong input: Collection `{}` already \
                     exists!\"",
                    request.collection_name
                ));
            }
            collections.insert(request.collection_name.clone(), layout);
            *self.created_at.lock().unwrap() = Some(tokio::time::Instant::now());
            if self
                .fail_after_create
                .swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                return Err("Timeout expired".into());
            }
            Ok(())
        }
        /// Like Qdrant, creating an index that exists succeeds.
        async fn create_index(&self, request: CreateFieldIndexCollection) -> Result<()> {
            tokio::task::yield_now().await;
            let mut collections = self.collections.lock().unwrap();
            let layout = collections.get_mut(&request.collection_name).unwrap();
            if !layout.indexed.contains(&request.field_name) {
                layout.indexed.push(request.field_name);
            }
            Ok(())
        }
        async fn layout(&self, name: &str) -> Result<Layout> {
            // Lets starts that run together interleave here.
            tokio::task::yield_now().await;
            let created = self.created_at.lock().unwrap().unwrap();
            if created.elapsed() < self.init_window {
                return Err(
                    Error::unavailable("the Qdrant server is unavailable").with_source(
                        "status: Internal, message: \"Service internal error: 0 of 0 read \
                     operations failed\"",
                    ),
                );
            }
            let unreachable = self.peers.lock().unwrap().unreachable.clone();
            let mut layout = self.collections.lock().unwrap()[name].clone();
            for copy in &mut layout.copies {
                if copy.state == ReplicaState::Initializing && !unreachable.contains_key(&copy.peer)
                {
                    copy.state = ReplicaState::Active;
                }
            }
            Ok(layout)
        }
        async fn peers(&self) -> Result<Peers> {
            if self.peers_fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(Error::unavailable("reading the Qdrant cluster status"));
            }
            Ok(self.peers.lock().unwrap().clone())
        }
    }

    fn cluster_settings() -> ServerSettings {
        ServerSettings {
            collection: "docs".into(),
            shard_number: 3,
            replication_factor: 2,
            ..Default::default()
        }
    }

    /// Every shard copy initialises for 300 ms after the create, and
    /// collection info fails meanwhile (as Qdrant 1.18 does for 0.1-0.2 s):
    /// the three starts wait for it, and all of them start.
    #[tokio::test]
    async fn replicas_starting_together_all_get_the_collection_and_its_indexes() {
        let server = FakeServer::with_init_window(Duration::from_millis(300));
        let settings = cluster_settings();
        let (a, b, c) = tokio::join!(
            ensure_collection(&server, &settings, 384),
            ensure_collection(&server, &settings, 384),
            ensure_collection(&server, &settings, 384),
        );
        for started in [a, b, c] {
            assert_eq!(started.unwrap(), Vec::<String>::new());
        }
        // All three tried to create it; two were told it exists.
        assert_eq!(server.creates.load(std::sync::atomic::Ordering::SeqCst), 3);
        let mut indexed = server.layout("docs").await.unwrap().indexed;
        indexed.sort();
        let mut expected = INDEXED_FIELDS.to_vec();
        expected.sort();
        assert_eq!(indexed, expected);
    }

    #[tokio::test]
    async fn a_create_that_timed_out_is_completed_by_the_next_start() {
        let server = FakeServer::default();
        server
            .fail_after_create
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let settings = cluster_settings();
        let err = ensure_collection(&server, &settings, 384)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("create_timeout_s"), "{err}");
        // The collection exists without indexes; the next start adds them.
        assert!(server.layout("docs").await.unwrap().indexed.is_empty());
        ensure_collection(&server, &settings, 384).await.unwrap();
        assert_eq!(
            server.layout("docs").await.unwrap().indexed.len(),
            INDEXED_FIELDS.len()
        );
        assert_eq!(server.creates.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// A collection that never comes up is given up at create_timeout_s,
    /// with what it waited for.
    #[tokio::test]
    async fn a_collection_that_stays_unready_fails_at_the_create_timeout() {
        let server = FakeServer::with_init_window(Duration::from_secs(30));
        let settings = ServerSettings {
            create_timeout: Duration::from_millis(600),
            ..cluster_settings()
        };
        let started = tokio::time::Instant::now();
        let err = ensure_collection(&server, &settings, 384)
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        let err = err.to_string();
        assert!(
            err.contains("not ready within vector_store.create_timeout_s")
                && err.contains("0 of 0 read operations failed"),
            "{err}"
        );
    }

    /// With a peer down, no create is sent: the start fails at once and
    /// names the peer. A peer lost while copies initialise on it fails the
    /// start as soon as that is seen, naming it, not after the timeout.
    #[tokio::test]
    async fn a_peer_down_fails_the_create_at_once_and_by_name() {
        let server = FakeServer::default();
        server.lose_peer(3);
        let err = ensure_collection(&server, &cluster_settings(), 384)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("peer 3 (http://qdrant-2.qdrant:6335/")
                && err.contains("connection refused")
                && err.contains("cannot create"),
            "{err}"
        );
        assert_eq!(server.creates.load(std::sync::atomic::Ordering::SeqCst), 0);

        let server = FakeServer::with_init_window(Duration::from_millis(100));
        let settings = ServerSettings {
            create_timeout: Duration::from_secs(60),
            ..cluster_settings()
        };
        let (started, ()) = tokio::join!(ensure_collection(&server, &settings, 384), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            server.lose_peer(2);
        });
        let err = started.unwrap_err().to_string();
        assert!(
            err.contains("cannot finish setting up") && err.contains("on peer 2 ("),
            "{err}"
        );
    }

    /// A lost peer is named in the warnings (`/readyz`), with every shard
    /// that has a copy on it, and whether another copy serves each.
    #[tokio::test]
    async fn a_lost_peer_is_named_with_every_shard_it_held() {
        let server = FakeServer::default();
        let settings = cluster_settings();
        ensure_collection(&server, &settings, 384).await.unwrap();
        let layout = server.layout("docs").await.unwrap();
        assert!(peer_warnings(&settings, &layout, &cluster_peers()).is_empty());
        // 3 shards, 2 copies: shard s on peers s+1 and s+2 (mod 3).
        server.lose_peer(3);
        let warnings = peer_warnings(&settings, &layout, &server.peers().await.unwrap());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("peer 3 (http://qdrant-2.qdrant:6335/")
                && warnings[0].contains("shard(s) 1, 2 there")
                && warnings[0].contains("other copies serve"),
            "{warnings:?}"
        );
        // With a second peer gone, shard 1 (peers 2 and 3) has no copy left.
        server
            .peers
            .lock()
            .unwrap()
            .unreachable
            .insert(2, "timeout".into());
        let warnings = peer_warnings(&settings, &layout, &server.peers().await.unwrap());
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings
                .iter()
                .all(|w| w.contains("shard(s) 1 have no other active copy")),
            "{warnings:?}"
        );
    }

    /// A peer's REST API on 127.0.0.`n`:`port`, answering `GET /cluster`
    /// with `body` and recording each request's head.
    async fn rest_peer(
        n: u8,
        port: u16,
        body: serde_json::Value,
        log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    ) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener =
            tokio::net::TcpListener::bind(("127.0.0.".to_string() + &n.to_string(), port))
                .await
                .unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = stream.read(&mut buf).await.unwrap();
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).to_string());
                let body = body.to_string();
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        port
    }

    /// A `GET /cluster` body from a peer of the three at 127.0.0.1-3.
    fn cluster_body(role: &str, failing: &[(u8, &str)]) -> serde_json::Value {
        let failures: serde_json::Map<String, serde_json::Value> = failing
            .iter()
            .map(|(n, error)| {
                (
                    format!("http://127.0.0.{n}:6335/"),
                    serde_json::json!({"count": 4, "latest_error": error}),
                )
            })
            .collect();
        serde_json::json!({"result": {
            "status": "enabled",
            "peers": {
                "1": {"uri": "http://127.0.0.1:6335/"},
                "2": {"uri": "http://127.0.0.2:6335/"},
                "3": {"uri": "http://127.0.0.3:6335/"}
            },
            "raft_info": {"role": role},
            "message_send_failures": failures
        }, "status": "ok"})
    }

    /// Every peer is asked (with the API key): one whose REST API does not
    /// answer is lost, and send failures count as the leader reports them,
    /// not as a follower's stale view does.
    #[tokio::test]
    async fn every_peer_is_asked_and_the_leader_counts() {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        // Peer 1, a follower, still lists peer 2 from long ago; peer 2 is
        // the leader and fails to reach peer 3, which does not answer.
        let port = rest_peer(1, 0, cluster_body("Follower", &[(2, "old")]), log.clone()).await;
        rest_peer(
            2,
            port,
            cluster_body("Leader", &[(3, "refused")]),
            log.clone(),
        )
        .await;
        let url = format!("http://127.0.0.1:{port}");
        let admin = QdrantAdmin {
            client: Qdrant::from_url("http://127.0.0.1:9").build().unwrap(),
            rest: Some((reqwest::Client::new(), url, Some("k3y".into()))),
        };
        let peers = admin.peers().await.unwrap();
        assert_eq!(peers.uris.len(), 3);
        assert_eq!(peers.unreachable.keys().collect::<Vec<_>>(), [&3]);
        assert!(
            peers.unreachable[&3].contains(&format!("127.0.0.3:{port}")),
            "{:?}",
            peers.unreachable
        );
        let requests = log.lock().unwrap().clone();
        // The Service's answer, then each of the two peers that answer.
        assert_eq!(requests.len(), 3, "{requests:?}");
        for request in &requests {
            assert!(request.starts_with("GET /cluster "), "{request}");
            assert!(request.to_lowercase().contains("api-key: k3y"), "{request}");
        }
        // Without a REST address nothing is asked: no peers known.
        let quiet = QdrantAdmin {
            client: Qdrant::from_url("http://127.0.0.1:9").build().unwrap(),
            rest: None,
        };
        assert_eq!(quiet.peers().await.unwrap(), Peers::default());
    }

    /// Peers that cannot be read (a single server with only gRPC open)
    /// never stop a start: it creates the collection as before.
    #[tokio::test]
    async fn a_start_goes_on_when_the_peers_cannot_be_read() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let admin = QdrantAdmin {
            client: Qdrant::from_url("http://127.0.0.1:9").build().unwrap(),
            rest: Some((
                reqwest::Client::new(),
                format!("http://127.0.0.1:{port}"),
                None,
            )),
        };
        assert!(admin.peers().await.is_err());
        assert_eq!(peers_or_none(&admin).await, Peers::default());
        let server = FakeServer {
            peers_fail: true.into(),
            ..FakeServer::default()
        };
        ensure_collection(&server, &cluster_settings(), 384)
            .await
            .unwrap();
        assert_eq!(server.creates.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// `GET /cluster` as Qdrant 1.18 answers it, one peer failing.
    #[test]
    fn the_peer_status_is_read_from_the_cluster_api() {
        let body = serde_json::json!({
            "result": {
                "status": "enabled",
                "peer_id": 1,
                "peers": {
                    "1": {"uri": "http://qdrant-0.qdrant:6335/"},
                    "2": {"uri": "http://qdrant-1.qdrant:6335/"},
                    "3": {"uri": "http://qdrant-2.qdrant:6335/"}
                },
                "raft_info": {"term": 2, "commit": 40, "pending_operations": 0, "leader": 1,
                              "role": "Leader", "is_voter": true},
                "consensus_thread_status": {"consensus_thread_status": "working",
                                            "last_update": "2026-12-07T16:00:00Z"},
                "message_send_failures": {
                    "http://qdrant-2.qdrant:6335/": {
                        "count": 12,
                        "latest_error": "Failed to send message: transport error",
                        "latest_error_timestamp": "2026-12-07T16:00:00Z"
                    }
                }
            },
            "status": "ok",
            "time": 0.00001
        });
        let peers = Peers::from_cluster_status(&body).unwrap();
        assert_eq!(peers.uris.len(), 3);
        assert_eq!(
            peers.unreachable,
            HashMap::from([(3, "Failed to send message: transport error".to_string())])
        );
        let single = serde_json::json!({"result": {"status": "disabled"}, "status": "ok"});
        assert_eq!(
            Peers::from_cluster_status(&single).unwrap(),
            Peers::default()
        );
    }

    #[tokio::test]
    async fn an_existing_collection_of_another_layout_is_refused_by_name() {
        let server = FakeServer::default();
        let settings = cluster_settings();
        ensure_collection(&server, &settings, 384).await.unwrap();
        let err = ensure_collection(&server, &settings, 768)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("384-d vectors") && err.contains("768-d"),
            "{err}"
        );
        let other = ServerSettings {
            shard_number: 6,
            ..cluster_settings()
        };
        let err = ensure_collection(&server, &other, 384)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("3 shards") && err.contains("shard_number is 6"),
            "{err}"
        );
    }

    #[test]
    fn the_layout_check_names_each_mismatch() {
        let settings = cluster_settings();
        let good = Layout {
            dense: [(DENSE.to_string(), (384, Distance::Cosine))].into(),
            sparse: [(SPARSE.to_string(), Some(Modifier::Idf))].into(),
            shard_number: 3,
            replication_factor: 2,
            active_replicas: [(0, 2), (1, 2), (2, 2)].into(),
            copies: vec![],
            indexed: vec![],
        };
        assert_eq!(check_layout(&settings, 384, &good), (vec![], vec![]));
        let bad = Layout {
            dense: [(DENSE.to_string(), (384, Distance::Dot))].into(),
            sparse: [(SPARSE.to_string(), None)].into(),
            replication_factor: 1,
            ..good.clone()
        };
        let (errors, _) = check_layout(&settings, 384, &bad);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("Dot"), "{errors:?}");
        assert!(errors[1].contains("not Idf"), "{errors:?}");
        assert!(errors[2].contains("replication factor 1"), "{errors:?}");
        let unnamed = Layout {
            dense: [(String::new(), (384, Distance::Cosine))].into(),
            sparse: HashMap::new(),
            ..good.clone()
        };
        let (errors, _) = check_layout(&settings, 384, &unnamed);
        assert!(errors[0].contains("no dense vector named"), "{errors:?}");
        assert!(errors[1].contains("no sparse vector"), "{errors:?}");
        // Fewer replicas than asked (peers not joined yet): a warning.
        let short = Layout {
            active_replicas: [(0, 2), (1, 1), (2, 1)].into(),
            ..good
        };
        let (errors, warnings) = check_layout(&settings, 384, &short);
        assert!(errors.is_empty());
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("shard 1: 1, shard 2: 1"),
            "{warnings:?}"
        );
    }

    #[test]
    fn the_layout_is_read_from_collection_and_cluster_info() {
        use qdrant_client::qdrant::{
            CollectionConfig, CollectionParams, LocalShardInfo, PayloadSchemaInfo, RemoteShardInfo,
            SparseVectorConfig, SparseVectorParams, VectorParams, VectorParamsMap, VectorsConfig,
        };
        let info = CollectionInfo {
            config: Some(CollectionConfig {
                params: Some(CollectionParams {
                    shard_number: 2,
                    replication_factor: Some(2),
                    vectors_config: Some(VectorsConfig {
                        config: Some(Config::ParamsMap(VectorParamsMap {
                            map: [(
                                DENSE.to_string(),
                                VectorParams {
                                    size: 384,
                                    distance: Distance::Cosine as i32,
                                    ..Default::default()
                                },
                            )]
                            .into(),
                        })),
                    }),
                    sparse_vectors_config: Some(SparseVectorConfig {
                        map: [(
                            SPARSE.to_string(),
                            SparseVectorParams {
                                modifier: Some(Modifier::Idf as i32),
                                ..Default::default()
                            },
                        )]
                        .into(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            payload_schema: [("groups".to_string(), PayloadSchemaInfo::default())].into(),
            ..Default::default()
        };
        let cluster = CollectionClusterInfoResponse {
            local_shards: vec![LocalShardInfo {
                shard_id: 0,
                state: ReplicaState::Active as i32,
                ..Default::default()
            }],
            remote_shards: vec![
                RemoteShardInfo {
                    shard_id: 0,
                    peer_id: 2,
                    state: ReplicaState::Dead as i32,
                    ..Default::default()
                },
                RemoteShardInfo {
                    shard_id: 1,
                    peer_id: 2,
                    state: ReplicaState::Active as i32,
                    ..Default::default()
                },
                RemoteShardInfo {
                    shard_id: 1,
                    peer_id: 3,
                    state: ReplicaState::Initializing as i32,
                    ..Default::default()
                },
            ],
            peer_id: 1,
            ..Default::default()
        };
        let layout = Layout::of(&info, &cluster);
        assert_eq!(layout.dense[DENSE], (384, Distance::Cosine));
        assert_eq!(layout.sparse[SPARSE], Some(Modifier::Idf));
        assert_eq!((layout.shard_number, layout.replication_factor), (2, 2));
        assert_eq!(layout.active_replicas, [(0, 1), (1, 1)].into());
        let copies: Vec<(u32, u64, ReplicaState)> = layout
            .copies
            .iter()
            .map(|c| (c.shard, c.peer, c.state))
            .collect();
        assert_eq!(
            copies,
            [
                (0, 1, ReplicaState::Active),
                (0, 2, ReplicaState::Dead),
                (1, 2, ReplicaState::Active),
                (1, 3, ReplicaState::Initializing)
            ]
        );
        assert_eq!(layout.initializing(), [1]);
        assert_eq!(layout.indexed, ["groups"]);
    }
}

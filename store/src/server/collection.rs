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
        let mut active_replicas: HashMap<u32, u32> = HashMap::new();
        let states = cluster
            .local_shards
            .iter()
            .map(|s| (s.shard_id, s.state))
            .chain(cluster.remote_shards.iter().map(|s| (s.shard_id, s.state)));
        for (shard, state) in states {
            let count = active_replicas.entry(shard).or_default();
            *count += u32::from(state == ReplicaState::Active as i32);
        }
        let mut indexed: Vec<String> = info.payload_schema.keys().cloned().collect();
        indexed.sort();
        Self {
            dense,
            sparse,
            shard_number: params.map_or(0, |p| p.shard_number),
            replication_factor: params.and_then(|p| p.replication_factor).unwrap_or(1),
            active_replicas,
            indexed,
        }
    }
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
}

pub(super) struct QdrantAdmin(pub(super) Qdrant);

#[async_trait]
impl CollectionAdmin for QdrantAdmin {
    async fn exists(&self, name: &str) -> Result<bool> {
        self.0.collection_exists(name).await.map_err(server_error)
    }
    async fn create(&self, request: CreateCollection) -> Result<(), String> {
        self.0
            .create_collection(request)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
    async fn create_index(&self, request: CreateFieldIndexCollection) -> Result<()> {
        self.0
            .create_field_index(request)
            .await
            .map(drop)
            .map_err(server_error)
    }
    async fn layout(&self, name: &str) -> Result<Layout> {
        let info = self.0.collection_info(name).await.map_err(server_error)?;
        let cluster = self
            .0
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
}

/// Creates the collection unless it exists, ensures its payload indexes,
/// and checks its layout; returns the warnings. Safe when several
/// replicas start at once: "already exists" from a create is success,
/// and the indexes are ensured at every start, so a start that failed
/// midway (a create that outlived its timeout) is completed by the next.
pub async fn ensure_collection(
    admin: &dyn CollectionAdmin,
    settings: &ServerSettings,
    dimension: usize,
) -> Result<Vec<String>> {
    let name = &settings.collection;
    if !admin.exists(name).await? {
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
    let layout = admin.layout(name).await?;
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

    /// A server in memory: collections as layouts, a create that takes a
    /// while (so two starts overlap), and one that can be made to fail
    /// after creating (a create that outlives its timeout).
    #[derive(Default)]
    struct FakeServer {
        collections: std::sync::Mutex<HashMap<String, Layout>>,
        creates: std::sync::atomic::AtomicUsize,
        fail_after_create: std::sync::atomic::AtomicBool,
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
            Ok(self.collections.lock().unwrap()[name].clone())
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

    #[tokio::test]
    async fn replicas_starting_together_all_get_the_collection_and_its_indexes() {
        let server = FakeServer::default();
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
                    state: ReplicaState::Dead as i32,
                    ..Default::default()
                },
                RemoteShardInfo {
                    shard_id: 1,
                    state: ReplicaState::Active as i32,
                    ..Default::default()
                },
                RemoteShardInfo {
                    shard_id: 1,
                    state: ReplicaState::Active as i32,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let layout = Layout::of(&info, &cluster);
        assert_eq!(layout.dense[DENSE], (384, Distance::Cosine));
        assert_eq!(layout.sparse[SPARSE], Some(Modifier::Idf));
        assert_eq!((layout.shard_number, layout.replication_factor), (2, 2));
        assert_eq!(layout.active_replicas, [(0, 1), (1, 2)].into());
        assert_eq!(layout.indexed, ["groups"]);
    }
}

//! A Qdrant server or cluster over gRPC (`qdrant-client`), with the same
//! behaviour as the embedded engine: a named dense vector (cosine) and a
//! named BM25 sparse vector per chunk (computed here with the same
//! tokenizer as the embedded store, IDF applied by the server), keyword
//! indexes on the filter fields, filters inside every prefetch, hybrid
//! queries fused by the server with weighted RRF, or here by a convex
//! combination of both sides (`retrieval.fusion.method`).
//!
//! The requests are built by pure functions so that unit tests check them
//! without a server; `store/tests/vector_store.rs` runs the shared store
//! suite against a real server when `RAG_QDRANT_URL` is set.

use std::time::Duration;

use async_trait::async_trait;
use qdrant_client::qdrant::point_id::PointIdOptions;
use qdrant_client::qdrant::vector_output::Vector as VectorOut;
use qdrant_client::qdrant::{
    Condition, DeletePoints, DeletePointsBuilder, Filter, GetPointsBuilder, NamedVectors, PointId,
    PointStruct, PointsIdsList, PrefetchQueryBuilder, Query, QueryPoints, QueryPointsBuilder, Rrf,
    ScoredPoint, ScrollPointsBuilder, SearchParamsBuilder, SetPayloadPointsBuilder, UpsertPoints,
    UpsertPointsBuilder, Vector, VectorInput, VectorsOutput, VectorsSelector, WriteOrdering,
    WriteOrderingType,
};
use qdrant_client::{Payload, Qdrant};
use qdrant_edge::bm25_embed::EdgeBm25;
use rag_core::{
    BoxError, Error, FusionMethod, Result, ScoredChunk, SearchFilter, SearchMode, VectorPoint,
    VectorQuery, VectorStore,
};
use serde_json::json;

use crate::edge::{DENSE, PREFETCH_FACTOR, SPARSE, bm25, in_order, point_uuid};

mod collection;

use collection::QdrantAdmin;
pub use collection::{
    CollectionAdmin, Layout, Peers, ShardCopy, check_layout, create_collection, ensure_collection,
    field_indexes, peer_warnings,
};

/// Where the collection lives and how it is laid out across the cluster.
#[derive(Clone, PartialEq)]
pub struct ServerSettings {
    /// gRPC address, e.g. `http://qdrant:6334`.
    pub url: String,
    /// REST address, for the cluster's peer status (`GET /cluster`, not
    /// on gRPC); empty: peers are not checked.
    pub rest_url: String,
    pub api_key: Option<String>,
    pub collection: String,
    pub shard_number: u32,
    pub replication_factor: u32,
    /// Replicas that must confirm a write before it counts.
    pub write_consistency_factor: u32,
    pub timeout: Duration,
    /// How long creating the collection and its indexes may take: a
    /// cluster placing shards while a peer is down takes longer than any
    /// query should.
    pub create_timeout: Duration,
}

impl std::fmt::Debug for ServerSettings {
    /// The API key is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSettings")
            .field("url", &self.url)
            .field("rest_url", &self.rest_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "(set)"))
            .field("collection", &self.collection)
            .field("shard_number", &self.shard_number)
            .field("replication_factor", &self.replication_factor)
            .field("write_consistency_factor", &self.write_consistency_factor)
            .field("timeout", &self.timeout)
            .field("create_timeout", &self.create_timeout)
            .finish()
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            rest_url: String::new(),
            api_key: None,
            collection: "rag".into(),
            shard_number: 1,
            replication_factor: 1,
            write_consistency_factor: 1,
            timeout: Duration::from_secs(10),
            create_timeout: Duration::from_secs(120),
        }
    }
}

/// Writes go through each shard's leader, which orders them: a repair's
/// delete and another writer's upsert of the same chunk id (after a
/// crash, ids repeat) cannot be applied in opposite orders on two
/// replicas.
fn ordered() -> WriteOrdering {
    WriteOrdering {
        r#type: WriteOrderingType::Medium as i32,
    }
}

/// The oldest server that fuses with weights (`Rrf::weights`); older ones
/// ignore the field.
const WEIGHTED_RRF_SINCE: (u64, u64) = (1, 17);
/// The oldest server this store works with: hybrid queries use the `rrf`
/// query with its `k`, which came in 1.16.
const OLDEST_SERVER: (u64, u64) = (1, 16);

pub struct QdrantServerStore {
    client: Qdrant,
    settings: ServerSettings,
    bm25: EdgeBm25,
    /// The server's version, from its health check.
    version: String,
    /// Whether the server applies `retrieval.fusion` weights.
    weighted_fusion: bool,
    /// The collection's operations, with their longer timeout.
    admin: QdrantAdmin,
    dimension: usize,
    /// The warnings last logged: `/readyz` reads them at every probe, and
    /// the log says each once, when it appears.
    logged: std::sync::Mutex<Vec<String>>,
}

pub(crate) fn server_error(e: impl Into<BoxError>) -> Error {
    Error::unavailable("the Qdrant server is unavailable").with_source(e)
}

fn build_client(settings: &ServerSettings, timeout: Duration) -> Result<Qdrant> {
    Qdrant::from_url(&settings.url)
        .api_key(settings.api_key.clone())
        .timeout(timeout)
        // The client's own check prints to stdout and blocks inside async
        // code; `connect` asks the server's version itself.
        .skip_compatibility_check()
        .build()
        .map_err(|e| Error::invalid(format!("vector_store.url {:?}: {e}", settings.url)))
}

impl QdrantServerStore {
    /// Connects, and makes sure the collection exists with the layout the
    /// settings ask for (see [`ensure_collection`]).
    pub async fn connect(settings: ServerSettings, dimension: usize) -> Result<Self> {
        let client = build_client(&settings, settings.timeout)?;
        let version = client
            .health_check()
            .await
            .map_err(|e| {
                Error::unavailable(format!(
                    "the Qdrant server at {} cannot be reached",
                    settings.url
                ))
                .with_source(e)
            })?
            .version;
        if !version_at_least(&version, OLDEST_SERVER) {
            return Err(Error::invalid(format!(
                "the Qdrant server at {} is version {version}; this store needs {}.{} or later \
                 (1.17 or later for retrieval.fusion weights): upgrade the server",
                settings.url, OLDEST_SERVER.0, OLDEST_SERVER.1
            )));
        }
        let rest = if settings.rest_url.is_empty() {
            tracing::info!(
                "vector_store.rest_url is not set (and url has no port 6334): the cluster's \
                 peers are not checked"
            );
            None
        } else {
            let client = reqwest::Client::builder()
                .timeout(settings.timeout)
                .build()
                .map_err(|e| Error::internal("making the REST client").with_source(e))?;
            Some((client, settings.rest_url.clone(), settings.api_key.clone()))
        };
        let admin = QdrantAdmin {
            client: build_client(&settings, settings.create_timeout)?,
            rest,
        };
        ensure_collection(&admin, &settings, dimension).await?;
        tracing::info!(server = %settings.url, %version, collection = %settings.collection, "Qdrant server");
        let store = Self {
            client,
            bm25: bm25()?,
            weighted_fusion: version_at_least(&version, WEIGHTED_RRF_SINCE),
            version,
            settings,
            admin,
            dimension,
            logged: std::sync::Mutex::new(Vec::new()),
        };
        // Logged at start, then again whenever they change.
        store.warnings().await;
        Ok(store)
    }

    /// Whether the server applies fusion weights (1.17 and later): `rag`
    /// refuses to start with weights other than 1.0 when it does not.
    pub fn weighted_fusion(&self) -> bool {
        self.weighted_fusion
    }

    pub fn version(&self) -> &str {
        &self.version
    }
}

/// Whether `version` ("1.18.3", "v1.17.0-dev") is at least `min`; an
/// unreadable version is taken as current.
fn version_at_least(version: &str, min: (u64, u64)) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u64>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= min,
        _ => true,
    }
}

fn point_id(chunk_id: &str) -> Result<PointId> {
    Ok(PointId::from(point_uuid(chunk_id)?.to_string()))
}

fn chunk_id_of(id: Option<&PointId>) -> Option<String> {
    match id?.point_id_options.as_ref()? {
        PointIdOptions::Uuid(u) => Some(u.replace('-', "")),
        PointIdOptions::Num(n) => Some(format!("{n:032x}")),
    }
}

/// Points with their payload (ids and filter fields) and both vectors;
/// acknowledged once applied (`wait`), which is what makes them durable.
pub fn upsert(collection: &str, points: Vec<VectorPoint>, bm25: &EdgeBm25) -> Result<UpsertPoints> {
    let points = points
        .into_iter()
        .map(|p| {
            let payload = Payload::try_from(json!({
                "chunk_id": p.chunk_id,
                "doc_id": p.document_id,
                "collection": p.collection,
                "tags": p.tags,
                "groups": p.groups,
            }))
            .map_err(|e| Error::internal("payload").with_source(e))?;
            let sparse = bm25.embed_document(&p.text);
            let vectors = NamedVectors::default()
                .add_vector(DENSE, Vector::new_dense(p.dense))
                .add_vector(SPARSE, Vector::new_sparse(sparse.indices, sparse.values));
            Ok(PointStruct::new(point_id(&p.chunk_id)?, vectors, payload))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(UpsertPointsBuilder::new(collection, points)
        .wait(true)
        .ordering(ordered())
        .build())
}

pub fn delete(collection: &str, chunk_ids: &[String]) -> Result<DeletePoints> {
    let ids = chunk_ids
        .iter()
        .map(|c| point_id(c))
        .collect::<Result<Vec<_>>>()?;
    Ok(DeletePointsBuilder::new(collection)
        .points(PointsIdsList { ids })
        .wait(true)
        .ordering(ordered())
        .build())
}

/// The filter on collection, tags and groups (see the embedded store's).
pub fn filter_of(filter: &SearchFilter) -> Option<Filter> {
    let mut must = Vec::new();
    if let Some(collection) = &filter.collection {
        must.push(Condition::matches("collection", collection.clone()));
    }
    if !filter.tags.is_empty() {
        must.push(Condition::matches("tags", filter.tags.clone()));
    }
    if let Some(groups) = &filter.groups {
        // No groups: the empty-string group, which never exists.
        let mut set = groups.clone();
        if set.is_empty() {
            set.push(String::new());
        }
        must.push(Condition::matches("groups", set));
    }
    (!must.is_empty()).then(|| Filter::must(must))
}

/// The query for a search; `None` when it cannot match anything (a sparse
/// search for a question of stop words only).
pub fn query(collection: &str, query: &VectorQuery, bm25: &EdgeBm25) -> Option<QueryPoints> {
    let f = query.fusion;
    // Equal weights are plain RRF: sent without weights, so that servers
    // before 1.17 (which ignore them) rank the same.
    let weights = if f.dense_weight == 1.0 && f.sparse_weight == 1.0 {
        vec![]
    } else {
        vec![f.dense_weight, f.sparse_weight]
    };
    let filter = filter_of(&query.filter);
    let params = (query.exact || query.hnsw_ef.is_some()).then(|| {
        let mut p = SearchParamsBuilder::default().exact(query.exact);
        if let Some(ef) = query.hnsw_ef {
            p = p.hnsw_ef(ef as u64);
        }
        p.build()
    });
    let sparse = bm25.embed_query(&query.text);
    let has_words = !sparse.indices.is_empty();
    let dense_query = || Query::new_nearest(VectorInput::new_dense(query.dense.clone()));
    let sparse_query = || {
        Query::new_nearest(VectorInput::new_sparse(
            sparse.indices.clone(),
            sparse.values.clone(),
        ))
    };
    let mut request = QueryPointsBuilder::new(collection)
        .limit(query.limit as u64)
        .with_vectors(dense_only())
        .with_payload(false);
    if let Some(filter) = &filter {
        request = request.filter(filter.clone());
    }
    if let Some(params) = &params {
        request = request.params(params.clone());
    }
    let request = match query.mode {
        SearchMode::Sparse if !has_words => return None,
        SearchMode::Sparse => request.query(sparse_query()).using(SPARSE),
        SearchMode::Dense => request.query(dense_query()).using(DENSE),
        SearchMode::Hybrid if !has_words => request.query(dense_query()).using(DENSE),
        SearchMode::Hybrid => {
            let prefetch = |q: Query, using: &str| {
                let mut p = PrefetchQueryBuilder::default()
                    .query(q)
                    .using(using)
                    .limit((query.limit * PREFETCH_FACTOR) as u64);
                if let Some(filter) = &filter {
                    p = p.filter(filter.clone());
                }
                if let Some(params) = &params {
                    p = p.params(params.clone());
                }
                p
            };
            request
                .add_prefetch(prefetch(dense_query(), DENSE))
                .add_prefetch(prefetch(sparse_query(), SPARSE))
                .query(Query::new_rrf(Rrf {
                    k: Some(f.rrf_k as u32),
                    weights,
                }))
        }
    };
    Some(request.build())
}

fn dense_only() -> VectorsSelector {
    VectorsSelector {
        names: vec![DENSE.to_string()],
    }
}

fn dense_of(vectors: Option<&VectorsOutput>) -> Option<Vec<f32>> {
    match vectors?.get_vector_by_name(DENSE)? {
        VectorOut::Dense(d) => Some(d.data),
        _ => None,
    }
}

fn scored_chunk(point: ScoredPoint, question: &[f32]) -> Result<ScoredChunk> {
    let chunk_id = chunk_id_of(point.id.as_ref())
        .ok_or_else(|| Error::internal("the Qdrant server returned a hit without an id"))?;
    let vector = dense_of(point.vectors.as_ref())
        .ok_or_else(|| Error::internal("the Qdrant server returned a hit without its vector"))?;
    Ok(ScoredChunk {
        similarity: crate::edge::similarity(&vector, question),
        chunk_id,
        score: point.score,
        vector,
    })
}

#[async_trait]
impl VectorStore for QdrantServerStore {
    async fn upsert(&self, points: Vec<VectorPoint>) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let request = upsert(&self.settings.collection, points, &self.bm25)?;
        self.client
            .upsert_points(request)
            .await
            .map_err(server_error)?;
        Ok(())
    }

    async fn delete(&self, chunk_ids: &[String]) -> Result<()> {
        if chunk_ids.is_empty() {
            return Ok(());
        }
        let request = delete(&self.settings.collection, chunk_ids)?;
        self.client
            .delete_points(request)
            .await
            .map_err(server_error)?;
        Ok(())
    }

    async fn search(&self, q: &VectorQuery) -> Result<Vec<ScoredChunk>> {
        if q.mode == SearchMode::Hybrid && q.fusion.method == FusionMethod::Convex {
            return crate::fusion::convex_search(self, q).await;
        }
        let weighted = q.fusion.dense_weight != 1.0 || q.fusion.sparse_weight != 1.0;
        if q.mode == SearchMode::Hybrid && weighted && !self.weighted_fusion {
            return Err(Error::invalid(format!(
                "the Qdrant server is version {}, which ignores fusion weights (they need 1.17 \
                 or later): upgrade the server, or set retrieval.fusion.dense_weight and \
                 sparse_weight to 1.0",
                self.version
            )));
        }
        let Some(request) = query(&self.settings.collection, q, &self.bm25) else {
            return Ok(vec![]);
        };
        let response = self.client.query(request).await.map_err(server_error)?;
        response
            .result
            .into_iter()
            .map(|p| scored_chunk(p, &q.dense))
            .collect()
    }

    async fn vectors(&self, chunk_ids: &[String]) -> Result<Vec<Option<Vec<f32>>>> {
        let ids = chunk_ids
            .iter()
            .map(|c| point_id(c))
            .collect::<Result<Vec<_>>>()?;
        let response = self
            .client
            .get_points(
                GetPointsBuilder::new(&self.settings.collection, ids)
                    .with_vectors(dense_only())
                    .with_payload(false),
            )
            .await
            .map_err(server_error)?;
        let found = response
            .result
            .into_iter()
            .filter_map(|r| Some((chunk_id_of(r.id.as_ref())?, dense_of(r.vectors.as_ref())?)));
        Ok(in_order(chunk_ids, found))
    }

    async fn chunk_ids(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut offset: Option<PointId> = None;
        loop {
            let mut request = ScrollPointsBuilder::new(&self.settings.collection)
                .limit(1000)
                .with_payload(false)
                .with_vectors(false);
            if let Some(o) = offset.take() {
                request = request.offset(o);
            }
            let response = self.client.scroll(request).await.map_err(server_error)?;
            out.extend(
                response
                    .result
                    .iter()
                    .filter_map(|r| chunk_id_of(r.id.as_ref())),
            );
            match response.next_page_offset {
                Some(next) => offset = Some(next),
                None => break,
            }
        }
        Ok(out)
    }

    /// The server builds its indexes itself as points arrive.
    async fn optimize(&self) -> Result<()> {
        Ok(())
    }

    async fn set_labels(
        &self,
        document_id: &str,
        tags: &[String],
        groups: &[String],
    ) -> Result<()> {
        let request = set_labels(&self.settings.collection, document_id, tags, groups)?;
        self.client
            .set_payload(request)
            .await
            .map_err(server_error)?;
        Ok(())
    }

    /// Read afresh: replicas that were still initialising at start, or a
    /// peer lost since, show as they are now.
    async fn warnings(&self) -> Vec<String> {
        let layout = match self.admin.layout(&self.settings.collection).await {
            Ok(layout) => layout,
            Err(e) => return vec![format!("the collection's layout cannot be read: {e}")],
        };
        let mut warnings = check_layout(&self.settings, self.dimension, &layout).1;
        match self.admin.peers().await {
            Ok(peers) => warnings.extend(peer_warnings(&self.settings, &layout, &peers)),
            Err(e) => warnings.push(format!("the cluster's peers cannot be read: {}", e.chain())),
        }
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        for warning in warnings.iter().filter(|w| !logged.contains(w)) {
            tracing::warn!(collection = %self.settings.collection, "{warning}");
        }
        *logged = warnings.clone();
        warnings
    }
}

/// Sets the labels of every point of a document (a filter on `doc_id`),
/// acknowledged once applied.
pub fn set_labels(
    collection: &str,
    document_id: &str,
    tags: &[String],
    groups: &[String],
) -> Result<qdrant_client::qdrant::SetPayloadPoints> {
    let payload = Payload::try_from(json!({"tags": tags, "groups": groups}))
        .map_err(|e| Error::internal("payload").with_source(e))?;
    Ok(SetPayloadPointsBuilder::new(collection, payload)
        .points_selector(Filter::must([Condition::matches(
            "doc_id",
            document_id.to_string(),
        )]))
        .wait(true)
        .ordering(ordered())
        .build())
}

#[cfg(test)]
mod tests {
    use qdrant_client::qdrant::condition::ConditionOneOf;
    use qdrant_client::qdrant::r#match::MatchValue;
    use qdrant_client::qdrant::query::Variant;
    use rag_core::Fusion as FusionSettings;

    use super::*;

    fn search(mode: SearchMode, text: &str, groups: Option<Vec<String>>) -> VectorQuery {
        VectorQuery {
            dense: vec![0.6, 0.8, 0.0],
            text: text.into(),
            mode,
            fusion: FusionSettings {
                rrf_k: 60,
                method: FusionMethod::Rrf,
                dense_weight: 1.0,
                sparse_weight: 0.5,
                alpha: 0.8,
            },
            filter: SearchFilter {
                collection: Some("wiki".into()),
                tags: vec!["hr".into()],
                groups,
            },
            limit: 5,
            exact: false,
            hnsw_ef: Some(128),
        }
    }

    /// (field, keywords) of each `must` condition.
    fn conditions(filter: &Filter) -> Vec<(String, Vec<String>)> {
        filter
            .must
            .iter()
            .map(|c| match &c.condition_one_of {
                Some(ConditionOneOf::Field(f)) => {
                    let values = match f.r#match.as_ref().and_then(|m| m.match_value.clone()) {
                        Some(MatchValue::Keyword(k)) => vec![k],
                        Some(MatchValue::Keywords(k)) => k.strings,
                        other => panic!("unexpected match {other:?}"),
                    };
                    (f.key.clone(), values)
                }
                other => panic!("unexpected condition {other:?}"),
            })
            .collect()
    }

    #[test]
    fn points_carry_ids_payload_and_both_vectors() {
        let bm25 = bm25().unwrap();
        let chunk = format!("{:032x}", 0xabcdefu32);
        let request = upsert(
            "docs",
            vec![VectorPoint {
                chunk_id: chunk.clone(),
                document_id: "d1".into(),
                collection: "wiki".into(),
                tags: vec!["hr".into()],
                groups: vec!["staff".into()],
                dense: vec![0.6, 0.8, 0.0],
                text: "Salary bands are reviewed every spring".into(),
            }],
            &bm25,
        )
        .unwrap();
        assert_eq!(request.wait, Some(true));
        let point = &request.points[0];
        assert_eq!(chunk_id_of(point.id.as_ref()).unwrap(), chunk);
        let payload = &point.payload;
        assert_eq!(payload["doc_id"].as_str().map(String::as_str), Some("d1"));
        assert_eq!(
            payload["collection"].as_str().map(String::as_str),
            Some("wiki")
        );
        assert!(payload.contains_key("groups") && payload.contains_key("tags"));
        let vectors = format!("{:?}", point.vectors);
        assert!(
            vectors.contains(DENSE) && vectors.contains(SPARSE),
            "{vectors}"
        );

        let request = delete("docs", std::slice::from_ref(&chunk)).unwrap();
        assert_eq!(request.wait, Some(true));
        assert!(format!("{request:?}").contains(&point_uuid(&chunk).unwrap().to_string()));
        assert!(delete("docs", &["not-hex".into()]).is_err());
    }

    #[test]
    fn hybrid_prefetches_both_sides_filtered_and_fuses_with_weighted_rrf() {
        let bm25 = bm25().unwrap();
        let q = search(
            SearchMode::Hybrid,
            "salary bands",
            Some(vec!["staff".into()]),
        );
        let request = query("docs", &q, &bm25).unwrap();
        assert_eq!(request.limit, Some(5));
        let Some(Variant::Rrf(rrf)) = request.query.and_then(|q| q.variant) else {
            panic!("RRF fusion expected");
        };
        assert_eq!((rrf.k, rrf.weights), (Some(60), vec![1.0, 0.5]));
        assert_eq!(request.prefetch.len(), 2);
        let expected = vec![
            ("collection".to_string(), vec!["wiki".to_string()]),
            ("tags".to_string(), vec!["hr".to_string()]),
            ("groups".to_string(), vec!["staff".to_string()]),
        ];
        for (prefetch, using) in request.prefetch.iter().zip([DENSE, SPARSE]) {
            assert_eq!(prefetch.using.as_deref(), Some(using));
            assert_eq!(prefetch.limit, Some(5 * PREFETCH_FACTOR as u64));
            // The filter is inside each prefetch, not applied after fusion.
            assert_eq!(conditions(prefetch.filter.as_ref().unwrap()), expected);
            assert_eq!(prefetch.params.as_ref().unwrap().hnsw_ef, Some(128));
        }
        assert_eq!(conditions(request.filter.as_ref().unwrap()), expected);
    }

    #[test]
    fn versions_and_equal_fusion_weights() {
        assert!(version_at_least("1.17.0", WEIGHTED_RRF_SINCE));
        assert!(version_at_least("v1.18.3", WEIGHTED_RRF_SINCE));
        assert!(version_at_least("2.0.0", WEIGHTED_RRF_SINCE));
        assert!(!version_at_least("1.16.3", WEIGHTED_RRF_SINCE));
        assert!(version_at_least("dev", WEIGHTED_RRF_SINCE));
        // Equal weights go as plain RRF, which every server ranks alike.
        let bm25 = bm25().unwrap();
        let mut q = search(SearchMode::Hybrid, "salary bands", None);
        q.fusion.sparse_weight = 1.0;
        let Some(Variant::Rrf(rrf)) = query("docs", &q, &bm25)
            .unwrap()
            .query
            .and_then(|q| q.variant)
        else {
            panic!("RRF fusion expected");
        };
        assert!(rrf.weights.is_empty());
        let request = set_labels("docs", "d1", &["t".into()], &["g".into()]).unwrap();
        assert_eq!(request.wait, Some(true));
        assert!(request.payload.contains_key("groups") && request.payload.contains_key("tags"));
        assert!(format!("{:?}", request.points_selector).contains("doc_id"));
    }

    #[test]
    fn single_mode_queries_and_empty_group_lists() {
        let bm25 = bm25().unwrap();
        let dense = query("docs", &search(SearchMode::Dense, "x", None), &bm25).unwrap();
        assert!(dense.prefetch.is_empty());
        assert_eq!(dense.using.as_deref(), Some(DENSE));
        let sparse = query("docs", &search(SearchMode::Sparse, "salary", None), &bm25).unwrap();
        assert_eq!(sparse.using.as_deref(), Some(SPARSE));
        // Stop words only: no sparse side.
        assert!(
            query(
                "docs",
                &search(SearchMode::Sparse, "the of and", None),
                &bm25
            )
            .is_none()
        );
        let hybrid = query("docs", &search(SearchMode::Hybrid, "the of", None), &bm25).unwrap();
        assert_eq!(hybrid.using.as_deref(), Some(DENSE));
        // A caller with no groups matches only the group that never exists.
        let none = filter_of(&SearchFilter {
            groups: Some(vec![]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            conditions(&none),
            [("groups".to_string(), vec![String::new()])]
        );
        assert!(filter_of(&SearchFilter::default()).is_none());
    }
}

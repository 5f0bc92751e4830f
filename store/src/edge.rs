use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use qdrant_edge::bm25_embed::{EdgeBm25, EdgeBm25Config};
use qdrant_edge::external::ordered_float::{NotNan, OrderedFloat};
use qdrant_edge::{
    AnyVariants, Condition, Distance, EdgeConfig, EdgeShard, EdgeSparseVectorParamsBuilder,
    EdgeVectorParams, FieldCondition, Filter, Fusion, Match, Modifier, NamedQuery, Payload,
    PayloadFieldSchema, PayloadOps, PayloadSchemaType, PointId, PointInsertOperations,
    PointOperations, PointStruct, Prefetch, QueryEnum, QueryRequest, ScoredPoint, ScoringQuery,
    ScrollRequest, SearchParams, SetPayloadOp, SparseVector, UpdateOperation, Vector,
    VectorInternal, VectorStructInternal, Vectors, WithPayloadInterface, WithVector,
};
use qdrant_edge::{CreateIndex, FieldIndexOperations};
use rag_core::{
    BoxError, Error, FusionMethod, Result, ScoredChunk, SearchFilter, SearchMode, VectorPoint,
    VectorQuery, VectorStore,
};
use serde_json::json;
use uuid::Uuid;

pub(crate) const DENSE: &str = "dense";
pub(crate) const SPARSE: &str = "bm25";
/// BM25's expected passage length, in tokens after stop words are removed:
/// the mean over the handbook's chunks at the default chunk size (about 200
/// embedder tokens) is close to it. Changing it needs a re-ingest.
const BM25_AVG_LEN: f64 = 100.0;
/// Candidates each side of a hybrid search brings to the fusion, per hit
/// asked for.
pub(crate) const PREFETCH_FACTOR: usize = 4;
/// Payload fields that filters use; each gets a keyword index.
pub(crate) const INDEXED_FIELDS: [&str; 4] = ["collection", "doc_id", "tags", "groups"];

/// Qdrant's in-process engine, persisted under one folder.
///
/// Only one process may open the folder at a time: the engine locks its
/// write-ahead log, and a second `rag` on the same data directory gets a
/// clear error instead of a corrupted store.
///
/// The engine is synchronous: every call into it runs on tokio's blocking
/// pool, so a search or a flushed write never stalls the async workers.
pub struct EdgeVectorStore {
    engine: Arc<Engine>,
    path: PathBuf,
}

/// What the blocking calls share.
struct Engine {
    shard: EdgeShard,
    bm25: EdgeBm25,
    /// The engine's `flush` expects no concurrent writer; every write and
    /// flush goes through this lock.
    writes: Mutex<()>,
}

/// How the dense vectors' HNSW graph is built: its links per node (`m`)
/// and its breadth while building (`ef_construct`); `None`: the engine's
/// (16 and 100). Applies when a store is created.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HnswBuild {
    pub m: Option<usize>,
    pub ef_construct: Option<usize>,
}

impl EdgeVectorStore {
    /// Opens the store at `path`, creating it for `dimension`-sized vectors
    /// when it does not exist yet.
    pub fn open(path: &Path, dimension: usize) -> Result<Self> {
        Self::open_with(path, dimension, HnswBuild::default())
    }

    /// [`EdgeVectorStore::open`], creating a new store's graph as `hnsw`
    /// says (an existing store keeps the graph it was built with).
    pub fn open_with(path: &Path, dimension: usize, hnsw: HnswBuild) -> Result<Self> {
        std::fs::create_dir_all(path)
            .map_err(|e| Error::internal(format!("creating {}", path.display())).with_source(e))?;
        let exists = path.join("edge_config.json").exists();
        let shard = if exists {
            EdgeShard::load(path, None)
        } else {
            let config = EdgeConfig::builder()
                .vector(DENSE, {
                    let mut params = EdgeVectorParams::builder(dimension, Distance::Cosine);
                    if hnsw != HnswBuild::default() {
                        let default = qdrant_edge::HnswIndexConfig::default();
                        params = params.hnsw_config(qdrant_edge::HnswIndexConfig {
                            m: hnsw.m.unwrap_or(default.m),
                            ef_construct: hnsw.ef_construct.unwrap_or(default.ef_construct),
                            ..default
                        });
                    }
                    params.build()
                })
                // The engine keeps document frequencies and applies IDF at
                // query time, so weights stay right as the corpus changes.
                .sparse_vector(
                    SPARSE,
                    EdgeSparseVectorParamsBuilder::new()
                        .modifier(Modifier::Idf)
                        .build(),
                )
                .build();
            EdgeShard::new(path, config)
        }
        .map_err(|e| open_error(path, e))?;
        if let Some(params) = shard.config().vectors.get(DENSE)
            && params.size != dimension
        {
            return Err(Error::invalid(format!(
                "the vector store at {} holds {}-d vectors but the embedder makes {dimension}-d ones; \
                 use a new --data-dir or re-ingest",
                path.display(),
                params.size
            )));
        }
        if !shard.config().sparse_vectors.contains_key(SPARSE) {
            return Err(Error::invalid(format!(
                "the vector store at {} was made by an older version without BM25 vectors; \
                 delete the data directory and ingest again",
                path.display()
            )));
        }
        let engine = Engine {
            shard,
            bm25: bm25()?,
            writes: Mutex::new(()),
        };
        if !exists {
            engine.create_indexes()?;
        }
        Ok(Self {
            engine: Arc::new(engine),
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` on the engine in tokio's blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Engine) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || work(&engine))
            .await
            .map_err(|e| Error::internal("a vector store task failed").with_source(e))?
    }

    async fn write(&self, op: UpdateOperation) -> Result<()> {
        self.blocking(move |engine| engine.write(op)).await
    }
}

impl Engine {
    /// Every point's chunk id, a page at a time.
    fn chunk_ids(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut offset = None;
        loop {
            let (records, next) = self
                .shard
                .scroll(ScrollRequest {
                    offset,
                    limit: Some(1000),
                    filter: None,
                    with_payload: Some(WithPayloadInterface::Bool(false)),
                    with_vector: WithVector::Bool(false),
                    order_by: None,
                })
                .map_err(engine_error)?;
            out.extend(records.iter().map(|r| chunk_id_of(&r.id)));
            match next {
                Some(n) => offset = Some(n),
                None => break,
            }
        }
        Ok(out)
    }

    fn create_indexes(&self) -> Result<()> {
        for field in INDEXED_FIELDS {
            self.write(UpdateOperation::FieldIndexOperation(
                FieldIndexOperations::CreateIndex(CreateIndex {
                    field_name: field
                        .try_into()
                        .map_err(|_| Error::internal("bad field name"))?,
                    field_schema: Some(PayloadFieldSchema::FieldType(PayloadSchemaType::Keyword)),
                }),
            ))?;
        }
        Ok(())
    }

    /// Applies one operation and flushes it to disk before returning.
    fn write(&self, op: UpdateOperation) -> Result<()> {
        let _guard = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        self.shard.update(op).map_err(engine_error)?;
        self.shard.flush();
        Ok(())
    }
}

fn open_error(path: &Path, e: impl std::fmt::Display) -> Error {
    let msg = e.to_string();
    if msg.contains("lock") || msg.contains("WouldBlock") || msg.contains("temporarily unavailable")
    {
        Error::unavailable(format!(
            "the vector store at {} is in use by another rag process (only one process may open a \
             data directory; stop the other one or use another --data-dir): {msg}",
            path.display()
        ))
    } else {
        Error::internal(format!(
            "opening the vector store at {}: {msg}",
            path.display()
        ))
    }
}

/// Qdrant's BM25 (English: lower-casing, stop words, stemming), the same
/// for the embedded store and the server one.
pub(crate) fn bm25() -> Result<EdgeBm25> {
    EdgeBm25::new(EdgeBm25Config {
        avg_len: NotNan::new(BM25_AVG_LEN).expect("not NaN"),
        ..Default::default()
    })
    .map_err(|e| Error::internal("BM25").with_source(e))
}

/// Cosine of a stored (normalised) vector with the question (maybe not).
pub(crate) fn similarity(vector: &[f32], question: &[f32]) -> f32 {
    let norm = question
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    vector.iter().zip(question).map(|(a, b)| a * b).sum::<f32>() / norm
}

fn engine_error(e: impl Into<BoxError>) -> Error {
    Error::internal("the embedded vector store failed").with_source(e)
}

/// The vectors found, in the order of `chunk_ids`; `None` for those not
/// found.
pub(crate) fn in_order(
    chunk_ids: &[String],
    found: impl Iterator<Item = (String, Vec<f32>)>,
) -> Vec<Option<Vec<f32>>> {
    let mut found: std::collections::HashMap<String, Vec<f32>> = found.collect();
    chunk_ids.iter().map(|c| found.remove(c)).collect()
}

/// Chunk ids are 128-bit hex hashes: they map one-to-one onto UUIDs.
pub(crate) fn point_uuid(chunk_id: &str) -> Result<Uuid> {
    let bytes = hex_to_16(chunk_id)
        .ok_or_else(|| Error::internal(format!("chunk id {chunk_id:?} is not 32 hex digits")))?;
    Ok(Uuid::from_bytes(bytes))
}

fn point_id(chunk_id: &str) -> Result<PointId> {
    Ok(PointId::Uuid(point_uuid(chunk_id)?))
}

fn hex_to_16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn chunk_id_of(id: &PointId) -> String {
    match id {
        PointId::Uuid(u) => u.simple().to_string(),
        PointId::NumId(n) => format!("{n:032x}"),
    }
}

fn dense_of(vector: Option<VectorStructInternal>) -> Option<Vec<f32>> {
    match vector {
        Some(VectorStructInternal::Named(mut named)) => match named.remove(DENSE) {
            Some(VectorInternal::Dense(v)) => Some(v),
            _ => None,
        },
        Some(VectorStructInternal::Single(v)) => Some(v),
        _ => None,
    }
}

fn scored_chunk(point: ScoredPoint, question: &[f32]) -> Result<ScoredChunk> {
    let vector = dense_of(point.vector)
        .ok_or_else(|| Error::internal("the vector store returned a hit without its vector"))?;
    Ok(ScoredChunk {
        chunk_id: chunk_id_of(&point.id),
        score: point.score,
        similarity: similarity(&vector, question),
        vector,
    })
}

fn filter_of(filter: &SearchFilter) -> Option<Filter> {
    let mut must = Vec::new();
    let key = |k: &str| k.try_into().expect("static payload key");
    if let Some(collection) = &filter.collection {
        must.push(Condition::Field(FieldCondition::new_match(
            key("collection"),
            Match::from(collection.clone()),
        )));
    }
    if !filter.tags.is_empty() {
        must.push(Condition::Field(FieldCondition::new_match(
            key("tags"),
            Match::new_any(AnyVariants::Strings(filter.tags.iter().cloned().collect())),
        )));
    }
    if let Some(groups) = &filter.groups {
        // A caller with no groups matches nothing that is restricted; the
        // empty-string group never exists, which keeps the filter non-empty.
        let mut set: Vec<String> = groups.clone();
        if set.is_empty() {
            set.push(String::new());
        }
        must.push(Condition::Field(FieldCondition::new_match(
            key("groups"),
            Match::new_any(AnyVariants::Strings(set.into_iter().collect())),
        )));
    }
    (!must.is_empty()).then(|| Filter {
        must: Some(must),
        ..Default::default()
    })
}

#[async_trait]
impl VectorStore for EdgeVectorStore {
    async fn upsert(&self, points: Vec<VectorPoint>) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        // BM25 over every passage, then the write: all on the blocking pool.
        self.blocking(move |engine| {
            let points = points
                .into_iter()
                .map(|p| {
                    let payload = json!({
                        "chunk_id": p.chunk_id,
                        "doc_id": p.document_id,
                        "collection": p.collection,
                        "tags": p.tags,
                        "groups": p.groups,
                    });
                    let sparse: SparseVector = engine.bm25.embed_document(&p.text);
                    let vectors: [(&str, Vector); 2] =
                        [(DENSE, p.dense.into()), (SPARSE, sparse.into())];
                    Ok(PointStruct::new(
                        point_id(&p.chunk_id)?,
                        Vectors::new_named(vectors),
                        payload,
                    )
                    .into())
                })
                .collect::<Result<Vec<_>>>()?;
            engine.write(UpdateOperation::PointOperation(
                PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
            ))
        })
        .await
    }

    async fn delete(&self, chunk_ids: &[String]) -> Result<()> {
        if chunk_ids.is_empty() {
            return Ok(());
        }
        let ids = chunk_ids
            .iter()
            .map(|c| point_id(c))
            .collect::<Result<Vec<_>>>()?;
        self.write(UpdateOperation::PointOperation(
            PointOperations::DeletePoints { ids },
        ))
        .await
    }

    async fn search(&self, query: &VectorQuery) -> Result<Vec<ScoredChunk>> {
        let filter = filter_of(&query.filter);
        let params = (query.exact || query.hnsw_ef.is_some()).then(|| SearchParams {
            exact: query.exact,
            hnsw_ef: query.hnsw_ef,
            ..Default::default()
        });
        let dense = || {
            ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                query: VectorInternal::Dense(query.dense.clone()),
                using: Some(DENSE.to_string()),
            }))
        };
        let sparse_vector = self.engine.bm25.embed_query(&query.text);
        let sparse = || {
            ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                query: VectorInternal::Sparse(sparse_vector.clone()),
                using: Some(SPARSE.to_string()),
            }))
        };
        // A question of stop words only has no sparse side.
        let has_words = !sparse_vector.indices.is_empty();
        let (prefetches, scoring) = match query.mode {
            SearchMode::Dense => (vec![], dense()),
            SearchMode::Sparse if !has_words => return Ok(vec![]),
            SearchMode::Sparse => (vec![], sparse()),
            SearchMode::Hybrid if !has_words => (vec![], dense()),
            SearchMode::Hybrid if query.fusion.method == FusionMethod::Convex => {
                return crate::fusion::convex_search(self, query).await;
            }
            SearchMode::Hybrid => {
                let prefetch = |q: ScoringQuery| Prefetch {
                    prefetches: vec![],
                    query: Some(q),
                    limit: query.limit * PREFETCH_FACTOR,
                    params,
                    filter: filter.clone(),
                    score_threshold: None,
                };
                let f = query.fusion;
                (
                    vec![prefetch(dense()), prefetch(sparse())],
                    ScoringQuery::Fusion(Fusion::Rrf {
                        k: f.rrf_k,
                        weights: Some(vec![
                            OrderedFloat(f.dense_weight),
                            OrderedFloat(f.sparse_weight),
                        ]),
                    }),
                )
            }
        };
        let request = QueryRequest {
            prefetches,
            query: Some(scoring),
            filter,
            score_threshold: None,
            limit: query.limit,
            offset: 0,
            params,
            with_vector: WithVector::Selector(vec![DENSE.into()]),
            with_payload: WithPayloadInterface::Bool(false),
        };
        let points = self
            .blocking(move |engine| engine.shard.query(request).map_err(engine_error))
            .await?;
        points
            .into_iter()
            .map(|p| scored_chunk(p, &query.dense))
            .collect()
    }

    async fn vectors(&self, chunk_ids: &[String]) -> Result<Vec<Option<Vec<f32>>>> {
        let ids = chunk_ids
            .iter()
            .map(|c| point_id(c))
            .collect::<Result<Vec<_>>>()?;
        let records = self
            .blocking(move |engine| {
                engine
                    .shard
                    .retrieve(
                        &ids,
                        Some(WithPayloadInterface::Bool(false)),
                        Some(WithVector::Selector(vec![DENSE.into()])),
                    )
                    .map_err(engine_error)
            })
            .await?;
        let found = records
            .into_iter()
            .filter_map(|r| Some((chunk_id_of(&r.id), dense_of(r.vector)?)));
        Ok(in_order(chunk_ids, found))
    }

    async fn chunk_ids(&self) -> Result<Vec<String>> {
        self.blocking(|engine| engine.chunk_ids()).await
    }

    async fn set_labels(
        &self,
        document_id: &str,
        tags: &[String],
        groups: &[String],
    ) -> Result<()> {
        let serde_json::Value::Object(labels) = json!({"tags": tags, "groups": groups}) else {
            unreachable!("an object literal");
        };
        let key = "doc_id".try_into().expect("static payload key");
        self.write(UpdateOperation::PayloadOperation(PayloadOps::SetPayload(
            SetPayloadOp {
                payload: Payload::from(labels),
                points: None,
                filter: Some(Filter::new_must(Condition::Field(
                    FieldCondition::new_match(key, Match::from(document_id.to_string())),
                ))),
                key: None,
            },
        )))
        .await
    }

    async fn optimize(&self) -> Result<()> {
        self.blocking(|engine| {
            let _guard = engine.writes.lock().unwrap_or_else(|p| p.into_inner());
            engine.shard.optimize().map_err(engine_error)?;
            engine.shard.flush();
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new store builds its graph as asked, and keeps that when
    /// reopened with other settings.
    #[test]
    fn a_new_store_takes_its_hnsw_build_settings() {
        let dir = tempfile::tempdir().unwrap();
        let hnsw = HnswBuild {
            m: Some(32),
            ef_construct: Some(256),
        };
        let graph = |store: &EdgeVectorStore| {
            let config = store.engine.shard.config().vectors[DENSE].hnsw_config;
            config.map(|c| (c.m, c.ef_construct))
        };
        let store = EdgeVectorStore::open_with(dir.path(), 3, hnsw).unwrap();
        assert_eq!(graph(&store), Some((32, 256)));
        drop(store);
        let store = EdgeVectorStore::open(dir.path(), 3).unwrap();
        assert_eq!(graph(&store), Some((32, 256)));
        let plain = tempfile::tempdir().unwrap();
        assert_eq!(
            graph(&EdgeVectorStore::open(plain.path(), 3).unwrap()),
            None
        );
    }

    #[test]
    fn chunk_ids_round_trip_through_point_ids() {
        let c = rag_core::chunk_id("doc", "text", 0);
        assert_eq!(chunk_id_of(&point_id(&c).unwrap()), c);
        assert!(point_id("not-hex").is_err());
    }
}

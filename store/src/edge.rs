use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use qdrant_edge::{
    AnyVariants, Condition, Distance, EdgeConfig, EdgeShard, EdgeVectorParams, FieldCondition,
    Filter, Match, NamedQuery, PayloadFieldSchema, PayloadSchemaType, PointId,
    PointInsertOperations, PointOperations, PointStruct, QueryEnum, QueryRequest, ScoringQuery,
    ScrollRequest, UpdateOperation, Vectors, WithPayloadInterface, WithVector,
};
use qdrant_edge::{CreateIndex, FieldIndexOperations};
use rag_core::{Error, Result, ScoredChunk, SearchFilter, VectorPoint, VectorStore};
use serde_json::json;
use uuid::Uuid;

const DENSE: &str = "dense";
/// Payload fields that filters use; each gets a keyword index.
const INDEXED_FIELDS: [&str; 4] = ["collection", "doc_id", "tags", "groups"];

/// Qdrant's in-process engine, persisted under one folder.
///
/// Only one process may open the folder at a time: the engine locks its
/// write-ahead log, and a second `rag` on the same data directory gets a
/// clear error instead of a corrupted store.
pub struct EdgeVectorStore {
    shard: EdgeShard,
    path: PathBuf,
    /// The engine's `flush` expects no concurrent writer; every write and
    /// flush goes through this lock.
    writes: Mutex<()>,
}

impl EdgeVectorStore {
    /// Opens the store at `path`, creating it for `dimension`-sized vectors
    /// when it does not exist yet.
    pub fn open(path: &Path, dimension: usize) -> Result<Self> {
        std::fs::create_dir_all(path)
            .map_err(|e| Error::internal(format!("creating {}: {e}", path.display())))?;
        let exists = path.join("edge_config.json").exists();
        let shard = if exists {
            EdgeShard::load(path, None)
        } else {
            let config = EdgeConfig::builder()
                .vector(
                    DENSE,
                    EdgeVectorParams::builder(dimension, Distance::Cosine).build(),
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
        let store = Self {
            shard,
            path: path.to_owned(),
            writes: Mutex::new(()),
        };
        if !exists {
            store.create_indexes()?;
        }
        Ok(store)
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

    pub fn path(&self) -> &Path {
        &self.path
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

fn engine_error(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("vector store: {e}"))
}

fn point_id(chunk_id: &str) -> Result<PointId> {
    // Chunk ids are 128-bit hex hashes: they map one-to-one onto UUIDs.
    let bytes = hex_to_16(chunk_id)
        .ok_or_else(|| Error::internal(format!("chunk id {chunk_id:?} is not 32 hex digits")))?;
    Ok(PointId::Uuid(Uuid::from_bytes(bytes)))
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
                Ok(PointStruct::new(
                    point_id(&p.chunk_id)?,
                    Vectors::new_named([(DENSE, p.dense)]),
                    payload,
                )
                .into())
            })
            .collect::<Result<Vec<_>>>()?;
        self.write(UpdateOperation::PointOperation(
            PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
        ))
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
    }

    async fn search(
        &self,
        vector: &[f32],
        filter: &SearchFilter,
        limit: usize,
    ) -> Result<Vec<ScoredChunk>> {
        let request = QueryRequest {
            prefetches: vec![],
            query: Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                query: vector.to_vec().into(),
                using: Some(DENSE.to_string()),
            }))),
            filter: filter_of(filter),
            score_threshold: None,
            limit,
            offset: 0,
            params: None,
            with_vector: WithVector::Bool(false),
            with_payload: WithPayloadInterface::Bool(false),
        };
        let points = self.shard.query(request).map_err(engine_error)?;
        Ok(points
            .into_iter()
            .map(|p| ScoredChunk {
                chunk_id: chunk_id_of(&p.id),
                score: p.score,
            })
            .collect())
    }

    async fn chunk_ids(&self) -> Result<Vec<String>> {
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

    async fn optimize(&self) -> Result<()> {
        let _guard = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        self.shard.optimize().map_err(engine_error)?;
        self.shard.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(chunk: &str, doc: &str, groups: &[&str], dense: Vec<f32>) -> VectorPoint {
        VectorPoint {
            chunk_id: chunk.into(),
            document_id: doc.into(),
            collection: "default".into(),
            tags: vec![],
            groups: groups.iter().map(|g| g.to_string()).collect(),
            dense,
        }
    }

    fn id(n: u8) -> String {
        format!("{n:032x}")
    }

    #[tokio::test]
    async fn upsert_search_delete_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EdgeVectorStore::open(dir.path(), 3).unwrap();
            store
                .upsert(vec![
                    point(&id(1), "d1", &["hr"], vec![1.0, 0.0, 0.0]),
                    point(&id(2), "d1", &["eng"], vec![0.0, 1.0, 0.0]),
                    point(&id(3), "d2", &["hr", "eng"], vec![0.7, 0.7, 0.0]),
                ])
                .await
                .unwrap();
            let hits = store
                .search(&[1.0, 0.1, 0.0], &SearchFilter::default(), 2)
                .await
                .unwrap();
            assert_eq!(
                hits.iter().map(|h| h.chunk_id.clone()).collect::<Vec<_>>(),
                [id(1), id(3)]
            );

            let eng_only = SearchFilter {
                groups: Some(vec!["eng".into()]),
                ..Default::default()
            };
            let hits = store.search(&[1.0, 0.0, 0.0], &eng_only, 10).await.unwrap();
            let ids: Vec<_> = hits.iter().map(|h| h.chunk_id.clone()).collect();
            assert!(
                !ids.contains(&id(1)),
                "a chunk of another group leaked: {ids:?}"
            );
            assert_eq!(ids.len(), 2);

            let nobody = SearchFilter {
                groups: Some(vec![]),
                ..Default::default()
            };
            assert!(
                store
                    .search(&[1.0, 0.0, 0.0], &nobody, 10)
                    .await
                    .unwrap()
                    .is_empty()
            );

            store.delete(&[id(2)]).await.unwrap();
        }
        // Reopen: what was written and flushed is still there.
        let store = EdgeVectorStore::open(dir.path(), 3).unwrap();
        let mut ids = store.chunk_ids().await.unwrap();
        ids.sort();
        assert_eq!(ids, [id(1), id(3)]);
        assert!(
            EdgeVectorStore::open(dir.path(), 4).is_err(),
            "dimension mismatch must be refused"
        );
    }

    #[test]
    fn chunk_ids_round_trip_through_point_ids() {
        let c = rag_core::chunk_id("doc", "text", 0);
        assert_eq!(chunk_id_of(&point_id(&c).unwrap()), c);
        assert!(point_id("not-hex").is_err());
    }
}

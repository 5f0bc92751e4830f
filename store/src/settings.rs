//! `[vector_store]`: the embedded engine, or a Qdrant server or cluster.

use std::time::Duration;

use rag_core::{Error, Result, Secret};
use serde::Deserialize;

use crate::ServerSettings;

/// The vector store: the embedded engine in `data_dir/vectors`, or a
/// Qdrant server or cluster when `url` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VectorStoreSettings {
    /// gRPC address of a Qdrant server, e.g. `http://qdrant:6334`; empty:
    /// embedded.
    pub url: String,
    /// REST address of the same server, for the cluster's peer status;
    /// empty: `url` with port 6333 when it has Qdrant's gRPC port 6334.
    pub rest_url: String,
    pub api_key: Secret,
    pub collection: String,
    pub shard_number: u32,
    pub replication_factor: u32,
    pub write_consistency_factor: u32,
    pub timeout_s: f64,
    /// Creating the collection and its indexes (a cluster is slower).
    pub create_timeout_s: f64,
    /// Embedded only, for measuring: split the engine into this many
    /// shards, each with its own BM25 statistics, searched and merged as a
    /// sharded Qdrant collection is (0: the engine itself; 1: one shard,
    /// the baseline to compare with). A data directory holds one layout:
    /// use a new one to change it.
    pub simulated_shards: usize,
    /// Embedded, new stores: links per node of the HNSW graph (32; the
    /// engine's own 16 finds 0.86 of the exact top 10 at 100k chunks,
    /// BENCHMARKS.md).
    pub hnsw_m: Option<usize>,
    /// Embedded, new stores: the graph's breadth while building (256; the
    /// engine's own is 100).
    pub hnsw_ef_construct: Option<usize>,
}

impl Default for VectorStoreSettings {
    fn default() -> Self {
        let d = ServerSettings::default();
        Self {
            url: String::new(),
            rest_url: String::new(),
            api_key: Secret::default(),
            collection: d.collection,
            shard_number: d.shard_number,
            replication_factor: d.replication_factor,
            write_consistency_factor: d.write_consistency_factor,
            timeout_s: d.timeout.as_secs_f64(),
            create_timeout_s: d.create_timeout.as_secs_f64(),
            simulated_shards: 0,
            hnsw_m: Some(32),
            hnsw_ef_construct: Some(256),
        }
    }
}

impl VectorStoreSettings {
    /// Whether these settings name the embedded engine (no server URL).
    pub fn is_embedded(&self) -> bool {
        self.url.is_empty()
    }

    /// Checks `hnsw_m` and `hnsw_ef_construct`, when set.
    pub fn check_hnsw(&self) -> Result<()> {
        if let Some(m) = self.hnsw_m
            && !(4..=128).contains(&m)
        {
            return Err(Error::invalid(format!(
                "vector_store.hnsw_m is {m}: give 4 to 128 links per node (32 by default)"
            )));
        }
        if let Some(ef) = self.hnsw_ef_construct
            && !(4..=4096).contains(&ef)
        {
            return Err(Error::invalid(format!(
                "vector_store.hnsw_ef_construct is {ef}: give 4 to 4096 (256 by default)"
            )));
        }
        Ok(())
    }

    /// How a new embedded store builds its HNSW graph.
    pub fn hnsw(&self) -> crate::HnswBuild {
        crate::HnswBuild {
            m: self.hnsw_m,
            ef_construct: self.hnsw_ef_construct,
        }
    }

    /// The server connection these settings describe, checked.
    pub fn server(&self) -> Result<ServerSettings> {
        for (name, value) in [
            ("timeout_s", self.timeout_s),
            ("create_timeout_s", self.create_timeout_s),
        ] {
            if !(value > 0.0 && value.is_finite()) {
                return Err(Error::invalid(format!(
                    "vector_store.{name} must be a positive number of seconds"
                )));
            }
        }
        if self.shard_number == 0
            || self.replication_factor == 0
            || self.write_consistency_factor == 0
        {
            return Err(Error::invalid(
                "vector_store.shard_number, replication_factor and write_consistency_factor must be at least 1",
            ));
        }
        Ok(ServerSettings {
            url: self.url.clone(),
            rest_url: rest_url(&self.url, &self.rest_url),
            api_key: self.api_key.get().map(str::to_string),
            collection: self.collection.clone(),
            shard_number: self.shard_number,
            replication_factor: self.replication_factor,
            write_consistency_factor: self.write_consistency_factor,
            timeout: Duration::from_secs_f64(self.timeout_s),
            create_timeout: Duration::from_secs_f64(self.create_timeout_s),
        })
    }
}

/// The REST address of a Qdrant server: `rest_url` when set, else the
/// gRPC `url` with Qdrant's REST port when it names the gRPC port (6334);
/// empty when neither says.
fn rest_url(url: &str, rest_url: &str) -> String {
    if !rest_url.is_empty() {
        return rest_url.trim_end_matches('/').to_string();
    }
    match url.trim_end_matches('/').strip_suffix(":6334") {
        Some(base) => format!("{base}:6333"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::rest_url;

    #[test]
    fn hnsw_settings_are_checked() {
        let with = |m: Option<usize>, ef: Option<usize>| super::VectorStoreSettings {
            hnsw_m: m,
            hnsw_ef_construct: ef,
            ..Default::default()
        };
        assert!(with(None, None).check_hnsw().is_ok());
        assert!(with(Some(32), Some(256)).check_hnsw().is_ok());
        for (m, ef) in [(Some(0), None), (Some(1000), None), (None, Some(2))] {
            let err = with(m, ef).check_hnsw().unwrap_err().to_string();
            assert!(err.contains("vector_store.hnsw_"), "{err}");
        }
    }

    #[test]
    fn the_rest_address_is_given_or_follows_the_grpc_port() {
        assert_eq!(rest_url("http://qdrant:6334", ""), "http://qdrant:6333");
        assert_eq!(
            rest_url("https://q.internal:6334/", ""),
            "https://q.internal:6333"
        );
        assert_eq!(rest_url("http://qdrant:7000", ""), "");
        assert_eq!(
            rest_url("http://qdrant:7000", "http://qdrant:7001/"),
            "http://qdrant:7001"
        );
    }
}

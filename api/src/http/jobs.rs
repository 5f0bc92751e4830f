//! Ingest jobs submitted over HTTP: queued in a bounded channel and run one
//! at a time by a background task, with their state kept for `GET
//! /v1/jobs/{id}`.
//!
//! A job whose store is unavailable (the metadata database is down) waits
//! and runs again, with growing pauses, until [`RETRY_FOR`] has passed:
//! an ingest is idempotent, so the rerun skips what the first try
//! committed.
//!
//! Jobs live in memory: a restart forgets queued uploads (the client sees
//! 404 for the job and uploads again); what a job committed is in the
//! stores, consistent, like any ingest (ARCHITECTURE.md, "Ingest order").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::form::Rejected;
use rag_core::{Error, ErrorKind};
use rag_ingest::{IngestOptions, IngestReport, Input, Progress};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::app::App;

/// Finished jobs remembered; the oldest are forgotten first.
const KEEP_FINISHED: usize = 1000;
/// How long a job keeps retrying while a store is unavailable.
const RETRY_FOR: Duration = Duration::from_secs(15 * 60);
/// The longest pause between two tries.
const MAX_PAUSE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    /// A store is unavailable; the job runs again after a pause (`error`
    /// says why and when).
    Waiting,
    Done,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: String,
    pub state: JobState,
    pub collection: String,
    /// The access groups its documents get; a restricted key sees the job
    /// only when it shares one of them.
    pub groups: Vec<String>,
    pub files: Vec<String>,
    /// Documents processed so far.
    pub done: usize,
    /// Tries so far; more than one when a store was unavailable.
    pub attempts: usize,
    pub submitted_at: String,
    pub finished_at: Option<String>,
    /// Files refused at upload, not part of the run.
    pub rejected: Vec<Rejected>,
    /// Per-document outcomes, when the run finished.
    pub report: Option<IngestReport>,
    pub error: Option<String>,
}

struct Work {
    id: String,
    inputs: Vec<Input>,
    options: IngestOptions,
}

pub struct Jobs {
    jobs: Mutex<HashMap<String, Job>>,
    queue: mpsc::Sender<Work>,
    /// Held by the running job and by deletes, so that a delete never
    /// interleaves with an ingest of the same document.
    pub writes: tokio::sync::Mutex<()>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What a failed job tells its caller, who polls it later: like an HTTP
/// error (`http::error`), the chain is logged and an internal error is
/// reported only by the job's id.
fn job_error(job: &str, e: &Error) -> String {
    if e.kind() == ErrorKind::Internal {
        tracing::error!(%job, error = %e.chain(), "ingest job failed");
        format!("internal error; the server's log has the details under job {job}")
    } else {
        tracing::warn!(%job, error = %e.chain(), "ingest job failed");
        e.to_string()
    }
}

impl Jobs {
    /// Starts the worker; at most `depth` jobs wait behind the running one.
    pub fn start(app: Arc<App>, depth: usize) -> Arc<Self> {
        let (queue, mut rx) = mpsc::channel::<Work>(depth);
        let jobs = Arc::new(Self {
            jobs: Mutex::new(HashMap::new()),
            queue,
            writes: tokio::sync::Mutex::new(()),
        });
        let worker = jobs.clone();
        tokio::spawn(async move {
            while let Some(work) = rx.recv().await {
                worker.run(&app, work).await;
            }
        });
        jobs
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Job)) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(job) = jobs.get_mut(id) {
            f(job);
        }
    }

    /// Queues a job; `Unavailable` when the queue is full.
    pub fn submit(
        &self,
        inputs: Vec<Input>,
        options: IngestOptions,
        rejected: Vec<Rejected>,
    ) -> Result<Job, Error> {
        let id = uuid::Uuid::new_v4().to_string();
        let job = Job {
            id: id.clone(),
            state: JobState::Queued,
            collection: options.collection.clone(),
            groups: options.groups.clone(),
            files: inputs.iter().map(|i| i.source().to_string()).collect(),
            done: 0,
            attempts: 0,
            submitted_at: now(),
            finished_at: None,
            rejected,
            report: None,
            error: None,
        };
        {
            let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            let finished: Vec<(String, String)> = jobs
                .values()
                .filter(|j| matches!(j.state, JobState::Done | JobState::Failed))
                .map(|j| (j.finished_at.clone().unwrap_or_default(), j.id.clone()))
                .collect();
            if finished.len() >= KEEP_FINISHED {
                let mut finished = finished;
                finished.sort();
                for (_, old) in finished.iter().take(finished.len() + 1 - KEEP_FINISHED) {
                    jobs.remove(old);
                }
            }
            jobs.insert(id.clone(), job.clone());
        }
        self.queue
            .try_send(Work {
                id: id.clone(),
                inputs,
                options,
            })
            .map_err(|_| {
                self.jobs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                Error::unavailable("the ingest queue is full; retry later")
            })?;
        Ok(job)
    }

    pub fn get(&self, id: &str) -> Option<Job> {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    async fn run(&self, app: &App, work: Work) {
        let _writes = self.writes.lock().await;
        let started = Instant::now();
        let mut pause = Duration::from_secs(1);
        let result = loop {
            self.update(&work.id, |j| {
                j.state = JobState::Running;
                j.attempts += 1;
            });
            let result = self.try_once(app, &work).await;
            match result {
                Err(e)
                    if e.kind() == ErrorKind::Unavailable
                        && started.elapsed() + pause < RETRY_FOR =>
                {
                    let reason = e.to_string();
                    tracing::warn!(job = %work.id, error = %e.chain(), "ingest job waits for its store");
                    self.update(&work.id, |j| {
                        j.state = JobState::Waiting;
                        j.error = Some(format!("{reason}; trying again in {} s", pause.as_secs()));
                    });
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                }
                other => break other,
            }
        };
        if let Ok(report) = &result {
            crate::metrics::ingest_report(report);
        }
        self.update(&work.id, |j| {
            j.finished_at = Some(now());
            match result {
                Ok(report) => {
                    j.state = JobState::Done;
                    j.error = None;
                    j.report = Some(report);
                }
                Err(e) => {
                    j.state = JobState::Failed;
                    j.error = Some(job_error(&work.id, &e));
                }
            }
        });
    }

    async fn try_once(&self, app: &App, work: &Work) -> Result<IngestReport, Error> {
        let progress = |p: Progress| {
            if let Progress::Document { done, .. } = p {
                self.update(&work.id, |j| j.done = done);
            }
        };
        let ingestor = app
            .ingestor()
            .map_err(|e| Error::internal("making the ingestor").with_source(e))?;
        ingestor
            .ingest_inputs(&work.inputs, &work.options, &progress)
            .await
    }
}

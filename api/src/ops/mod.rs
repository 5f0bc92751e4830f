//! What some commands do beyond the request path: install models, measure
//! (bench, load), evaluate, and talk to a Kubernetes cluster.

pub mod bench;
#[cfg(feature = "kube")]
pub mod cluster;
pub mod eval;
pub mod eval_answers;
pub mod eval_trace;
pub mod load;
pub mod models;
pub mod reembed;

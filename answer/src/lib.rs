//! The answer policy: from retrieved passages and a [`Generator`] to an
//! [`Answer`] that cites what it uses, or says the documents do not cover
//! the question.
//!
//! - [`Policy::answer`]: the whole decision, in order: the relevance
//!   cut-off, passages that give the model orders withheld, passages packed
//!   into the context window, the model called, its citations checked and
//!   verified, an uncited answer attributed or dropped.
//! - [`prompt`]: how passages and the question are shown to the model.
//! - [`citations`]: the checks on what the model said.
//!
//! Pure over `rag_core`: no model, no HTTP, no runtime of its own; tested
//! with `rag_core::testing::FakeGenerator`.
//!
//! [`Generator`]: rag_core::Generator
//! [`Answer`]: rag_core::Answer

mod checked;
pub mod citations;
pub mod conversation;
mod policy;
pub mod prompt;
pub mod select;
pub mod verify;

pub use policy::{Admitted, Design, Policy};
pub use prompt::NOT_COVERED;

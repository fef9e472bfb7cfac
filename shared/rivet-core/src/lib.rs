//! Rivet's domain types: pipeline definitions, requirements, inputs, sandbox policy and job
//! outcomes.
//!
//! This crate does no I/O and depends on no runtime, VM, database or broker crate. Every other
//! crate may depend on it; it depends on none of them.

pub mod cidr;
pub mod definition;
pub mod duration;
pub mod input;
pub mod outcome;
pub mod policy;
pub mod requirement;
pub mod suggest;

pub use definition::{InputSpec, PipelineSpec, Problem, StageSpec};
pub use input::{InputType, InputValue};
pub use outcome::{JobOutcome, StageOutcome};
pub use policy::Policy;
pub use requirement::{CoreModule, Requirement, RequirementSet};

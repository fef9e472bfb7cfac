//! Plain query functions, one file per concern. Timestamps leave the database as Unix
//! milliseconds (`ms(...)` in SQL below).

pub mod attempts;
pub mod jobs;
pub mod logs;
pub mod pipelines;
pub mod registrations;

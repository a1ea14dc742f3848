//! The engine alone, mounted where the service has it (`tally::engine`), so that
//! fuzzing builds only what the engine needs rather than the whole service.

#[path = "../../src/engine/mod.rs"]
pub mod engine;

//! Tally: upload CSV files of transactions; get their entry count and the exact sum
//! of their `amount EUR` column, as browsable history, with notifications.

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod engine;
pub mod files;
pub mod metrics;
pub mod notify;
pub mod storage;
pub mod upload;
pub mod wakeup;
pub mod worker;

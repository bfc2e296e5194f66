//! Accounting: money, prices, budget windows and thresholds, and the state that survives restarts.

pub mod books;
pub mod budget;
pub mod money;
pub mod state;
pub mod window;

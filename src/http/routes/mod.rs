pub mod health;
pub mod media;
pub mod metrics;

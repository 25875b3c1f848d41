pub mod files;
pub mod health;
pub mod media;
pub mod messages;
pub mod metrics;
pub mod uploaders;
pub mod urls;

pub mod files;
pub mod health;
pub mod media;
pub mod urls;
